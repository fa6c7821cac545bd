"""Helpers for the data tests: schemas, synthetic chunks, writing + reading back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from terarec.data.readers import ReaderConfig, create_reader
from terarec.data.schema import DataSchema, SparseSpec
from terarec.data.synthetic import SynthSpec, make_samples
from terarec.data.writers import WRITERS, write_file_list

SHARED = Path(os.environ.get("TERAREC_SHARED_DATA",
                             Path(__file__).resolve().parents[3] / "shared" / "data"))
CRITEO = SHARED / "criteo_kaggle_sample" / "train_head10k.txt"
SIZES = [100, 2000, 50]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path


def schema(nnz: list[int], fixed: bool, dense_dim: int = 4, label_dim: int = 1) -> DataSchema:
    """Two sparse inputs: "a" with slots 0-1, "b" with slot 2."""
    return DataSchema([label_dim], ["label"], dense_dim, "dense",
                      [SparseSpec("a", nnz[:2], fixed, 2), SparseSpec("b", nnz[2:], fixed, 1)])


def make(fmt: str, nnz: list[int], n: int = 1000, seed: int = 0, sizes=SIZES):
    spec = SynthSpec(list(sizes), nnz, 1, 4, 1.2, int_dense=fmt == "Raw",
                     fixed_hotness=fmt.startswith("Raw"), norm_keys=fmt == "Norm", teacher=False)
    c, _ = make_samples(spec, n, np.random.default_rng(seed), None)
    c.dense[:, 0] = np.arange(n)  # unique id per sample (exact in float32 and int32)
    return c


def write(tmp_path: Path, fmt: str, c, name: str = "d", files: int = 1, **kw) -> str:
    """Write ``c`` (split over ``files`` files) and return the reader source."""
    ext = ".parquet" if fmt == "Parquet" else ".bin"
    n = len(c)
    paths = []
    for i in range(files):
        p = str(tmp_path / f"{name}{i}{ext}")
        WRITERS.get(fmt)(p, c.slice(n * i // files, n * (i + 1) // files), **kw)
        paths.append(p)
    if fmt in ("Norm", "Parquet"):
        src = str(tmp_path / f"{name}.txt")
        write_file_list(src, paths)
        return src
    return paths[0] if files == 1 else paths


def read_all(cfg: ReaderConfig, sch: DataSchema, bs: int = 128, **kw):
    kw.setdefault("repeat", False)
    kw.setdefault("drop_incomplete_batch", False)
    return list(create_reader(cfg, sch, bs, **kw))


def cat(batches, what: str) -> np.ndarray:
    if what in ("labels", "dense"):
        return np.concatenate([getattr(b, what).numpy() for b in batches])
    name, part = what.split(".")
    return np.concatenate([getattr(b.sparse[name], part).numpy() for b in batches])

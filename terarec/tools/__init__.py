"""``hugectr.tools``: HugeCTR's synthetic ``DataGenerator`` with its exact arguments (§16).

Differences from HugeCTR, on purpose: labels come from a planted teacher model (learnable, and
the teacher's AUC is printed as the best reachable AUC) unless ``teacher=False``, in which case
labels are random (Raw: ``i % 2``) as in HugeCTR; the Norm branch is implemented (HEAD's is a
no-op); ``DataReaderType_t.RawAsync`` writes the multi-hot layout with static hotness.

File locations: Norm/Parquet ``source`` / ``eval_source`` are file lists; data files go to
``<dir of source>/train/gen_<k>.<ext>`` and ``<dir of eval_source>/val/gen_<k>.<ext>`` (Parquet
adds ``_metadata.json`` beside them). Raw/RawAsync ``source`` / ``eval_source`` are the binary
files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terarec.data.synthetic import FILE_EXT, POWER_LAW_ALPHA, SynthSpec, generate_files
from terarec.data.writers import parquet_column_names, write_file_list, write_parquet_metadata
from terarec.enums import Check_t, Distribution_t, PowerLaw_t, name_of
from terarec.errors import ConfigError


@dataclass
class DataGeneratorParams:
    format: Any
    label_dim: int
    dense_dim: int
    num_slot: int
    i64_input_key: bool
    source: str
    eval_source: str
    slot_size_array: list[int]
    nnz_array: list[int] = field(default_factory=list)
    check_type: Any = Check_t.Sum
    dist_type: Any = Distribution_t.PowerLaw
    power_law_type: Any = PowerLaw_t.Specific
    alpha: float = 1.2
    num_files: int = 128
    eval_num_files: int = 32
    num_samples_per_file: int = 40960
    num_samples: int = 5242880
    eval_num_samples: int = 1310720
    float_label_dense: bool = False
    num_threads: int = 1
    # terarec extensions (keyword-only in spirit; HugeCTR scripts never pass them)
    teacher: bool = True
    seed: int = 0
    is_dense_float: bool = True

    def __post_init__(self) -> None:
        self.format = name_of(self.format)
        if len(self.slot_size_array) != self.num_slot:
            raise ConfigError("DataGeneratorParams.slot_size_array",
                              f"num_slot={self.num_slot} sizes", self.slot_size_array)
        if not self.nnz_array:
            self.nnz_array = [1] * self.num_slot
        if len(self.nnz_array) != self.num_slot:
            raise ConfigError("DataGeneratorParams.nnz_array", f"num_slot={self.num_slot} entries",
                              self.nnz_array)
        if self.format == "Raw" and any(n != 1 for n in self.nnz_array):
            raise ConfigError("DataGeneratorParams.nnz_array", "all 1 for the one-hot Raw format "
                              "(use DataReaderType_t.RawAsync for multi-hot)", self.nnz_array)


class DataGenerator:
    """``DataGenerator(params).generate()`` writes the train and eval data."""

    def __init__(self, data_generator_params: DataGeneratorParams) -> None:
        self.params = data_generator_params
        self.best_auc: float | None = None
        self.eval_best_auc: float | None = None

    def _spec(self) -> SynthSpec:
        p = self.params
        alpha = None
        if name_of(p.dist_type) == "PowerLaw":
            alpha = POWER_LAW_ALPHA.get(name_of(p.power_law_type), p.alpha)
        int_dense = (p.format == "Raw" and not p.float_label_dense) or (
            p.format == "RawAsync" and not p.is_dense_float)
        return SynthSpec(list(p.slot_size_array), list(p.nnz_array), p.label_dim, p.dense_dim,
                         alpha, int_dense=int_dense, fixed_hotness=p.format in ("Raw", "RawAsync"),
                         norm_keys=p.format == "Norm", teacher=p.teacher, seed=p.seed)

    def generate(self) -> None:
        p = self.params
        spec = self._spec()
        kw = {"check_type": name_of(p.check_type), "i64_input_key": p.i64_input_key,
              "float_label_dense": p.float_label_dense, "is_dense_float": p.is_dense_float}
        res = []
        for split, src, nfiles, total, part in (
            ("train", p.source, p.num_files, p.num_samples, 0),
            ("val", p.eval_source, p.eval_num_files, p.eval_num_samples, 1),
        ):
            if p.format in ("Raw", "RawAsync"):
                files, rows = [src], [total]
            elif p.format in FILE_EXT:
                base = os.path.join(os.path.dirname(src), split)
                files = [os.path.join(base, f"gen_{i}{FILE_EXT[p.format]}") for i in range(nfiles)]
                rows = [p.num_samples_per_file] * nfiles
            else:
                raise ConfigError("DataGeneratorParams.format", "Norm, Raw, RawAsync or Parquet",
                                  p.format)
            if not p.teacher and p.format == "Raw":
                res.append(self._raw_hugectr_labels(files[0], rows[0], spec, kw, part))
                continue
            res.append(generate_files(p.format, spec, files, rows, kw, p.num_threads, part))
            if p.format in FILE_EXT:
                write_file_list(src, files)
            if p.format == "Parquet":
                write_parquet_metadata(os.path.dirname(files[0]), files, rows,
                                       parquet_column_names(p.label_dim, p.dense_dim, p.num_slot))
        self.best_auc, self.eval_best_auc = res
        if p.teacher:
            print(f"[terarec DataGenerator] {p.format}: teacher (best reachable) AUC "
                  f"train {self.best_auc:.4f}, eval {self.eval_best_auc:.4f}")

    def _raw_hugectr_labels(self, path, n, spec, kw, part) -> None:
        """HugeCTR's Raw generator: label = i % 2, dense = j (column index)."""
        from terarec.data.synthetic import make_samples
        from terarec.data.writers import write_raw

        c, _ = make_samples(spec, n, np.random.default_rng([spec.seed, part]), None)
        c.labels[:] = (np.arange(n) % 2)[:, None]
        c.dense[:] = np.arange(spec.dense_dim, dtype=np.float32)[None, :]
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        write_raw(path, c, **kw)
        return None


__all__ = ["DataGenerator", "DataGeneratorParams"]

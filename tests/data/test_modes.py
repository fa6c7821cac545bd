"""Epoch vs repeat mode, rank partitioning, shuffling, set_source, the Prefetcher."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from _data_helpers import CRITEO, SIZES, cat, make, need, read_all, schema, write

from terarec.data import Prefetcher
from terarec.data.readers import ReaderConfig, create_reader

FORMATS = [("Norm", [1, 3, 2]), ("Raw", [1, 1, 1]), ("RawAsync", [1, 2, 2]),
           ("Parquet", [1, 3, 2])]


def _cfg(fmt, src, **kw):
    sizes = SIZES if fmt in ("RawAsync", "Parquet") else []
    return ReaderConfig(fmt, src, slot_size_array=sizes, num_workers=2, **kw)


@pytest.mark.parametrize("fmt,nnz", FORMATS)
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_cover_every_sample_once(tmp_path, fmt, nnz, world):
    c = make(fmt, nnz, n=1001)
    src = write(tmp_path, fmt, c, files=3 if fmt != "Raw" else 1)
    sch = schema(nnz, fmt.startswith("Raw"))
    seen = []
    for r in range(world):
        reader = create_reader(_cfg(fmt, src), sch, 64, repeat=False, rank=r, world_size=world,
                               drop_incomplete_batch=False)
        ids = cat(list(reader), "dense")[:, 0]
        if fmt == "Raw":
            ids = np.round(np.expm1(ids.astype(np.float64)))
        assert len(ids) == reader.num_samples
        seen.append(ids)
    allids = np.sort(np.concatenate(seen))
    np.testing.assert_array_equal(allids, np.arange(1001))


def test_epoch_drop_incomplete_and_repeat(tmp_path):
    c = make("Parquet", [1, 1, 1], n=250)
    src = write(tmp_path, "Parquet", c, files=2)
    sch = schema([1, 1, 1], True)
    kept = list(create_reader(_cfg("Parquet", src), sch, 100, repeat=False))
    assert [b.batch_size for b in kept] == [100, 100]
    kept = list(create_reader(_cfg("Parquet", src), sch, 100, repeat=False,
                              drop_incomplete_batch=False))
    assert [b.batch_size for b in kept] == [100, 100, 50]
    rep = create_reader(_cfg("Parquet", src), sch, 100, repeat=True)
    batches = list(itertools.islice(iter(rep), 6))
    ids = np.concatenate([b.dense[:, 0].numpy() for b in batches])
    np.testing.assert_array_equal(ids, np.concatenate([np.arange(250)] * 3)[:600])
    assert rep.epoch >= 2


def test_shuffle_is_a_permutation_and_seeded(tmp_path):
    c = make("RawAsync", [1, 1, 1], n=200_000)
    src = write(tmp_path, "RawAsync", c)
    sch = schema([1, 1, 1], True)
    a = cat(read_all(_cfg("RawAsync", src, shuffle=True, seed=3), sch, 4096), "dense")[:, 0]
    b = cat(read_all(_cfg("RawAsync", src, shuffle=True, seed=3), sch, 4096), "dense")[:, 0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.arange(200_000))
    np.testing.assert_array_equal(np.sort(a), np.arange(200_000))


def test_set_source_and_reset(tmp_path):
    c1, c2 = make("Norm", [1, 1, 1], n=10), make("Norm", [1, 1, 1], n=7, seed=1)
    s1 = write(tmp_path, "Norm", c1, name="one")
    s2 = write(tmp_path, "Norm", c2, name="two")
    r = create_reader(ReaderConfig("Norm", s1), schema([1, 1, 1], True), 5, repeat=False,
                      drop_incomplete_batch=False)
    assert r.num_samples == 10 and sum(b.batch_size for b in r) == 10
    r.set_source(s2)
    assert r.num_samples == 7
    np.testing.assert_array_equal(cat(list(r), "labels"), c2.labels)
    r.reset()
    assert r.epoch == 0


def test_criteo_tsv_reader_and_ranks():
    path = str(need(CRITEO))
    from terarec.data.schema import DataSchema, SparseSpec

    sch = DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])
    sizes = [1000] * 26
    full = read_all(ReaderConfig("CriteoTSV", path, slot_size_array=sizes), sch, 1000)
    assert sum(b.batch_size for b in full) == 10_000
    keys = cat(full, "data1.keys").reshape(-1, 26)
    offs = np.arange(26) * 1000
    assert ((keys >= offs) & (keys < offs + 1000)).all()
    labels = cat(full, "labels")[:, 0]
    assert abs(labels.mean() - 0.2182) < 1e-3
    with open(path) as fh:
        first = fh.readline().rstrip("\n").split("\t")[1:14]
    want = np.log1p(np.maximum([float(x) if x else 0.0 for x in first], 0))
    np.testing.assert_allclose(cat(full, "dense")[0], want, rtol=1e-5)
    # 64-bit hashing without slot sizes: missing -> 0
    h = read_all(ReaderConfig("CriteoTSV", path, i64_input_key=True), sch, 10_000)
    k = cat(h, "data1.keys").reshape(-1, 26)
    assert (k[:, 21] == 0).sum() > 0 and (k >= 0).all()


def test_prefetcher_order_and_errors(tmp_path):
    c = make("Parquet", [1, 1, 1], n=500)
    src = write(tmp_path, "Parquet", c)
    r = create_reader(_cfg("Parquet", src), schema([1, 1, 1], True), 50, repeat=False)
    with Prefetcher(r, "cpu", depth=2, num_threads=3) as pf:
        ids = np.concatenate([b.dense[:, 0].numpy() for b in pf])
    np.testing.assert_array_equal(ids, np.arange(500))

    def broken():
        yield from itertools.islice(iter(r), 2)
        raise RuntimeError("decoder exploded at file x.parquet")

    got = []
    with pytest.raises(RuntimeError, match="decoder exploded at file x.parquet"):
        for b in Prefetcher(broken(), torch.device("cpu")):
            got.append(b)
    assert len(got) == 2


def test_criteo_tsv_ranks_split_blocks(monkeypatch):
    from terarec.data.readers.criteo_tsv import CriteoTSVSource
    from terarec.data.schema import DataSchema, SparseSpec

    monkeypatch.setattr(CriteoTSVSource, "block_bytes", 100_000)
    path = str(need(CRITEO))
    sch = DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])
    parts = [cat(read_all(ReaderConfig("CriteoTSV", path), sch, 512, rank=r, world_size=3),
                 "data1.keys").reshape(-1, 26) for r in range(3)]
    assert all(len(p) > 2000 for p in parts)
    whole = cat(read_all(ReaderConfig("CriteoTSV", path), sch, 512), "data1.keys").reshape(-1, 26)
    assert sum(len(p) for p in parts) == len(whole) == 10_000
    a = np.unique(np.concatenate(parts), axis=0)
    np.testing.assert_array_equal(a, np.unique(whole, axis=0))

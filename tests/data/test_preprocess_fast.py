"""Pieces of the fast preprocessing path: the packed-value hash table, the vectorised vocab.json,
the order-exact merge of dense statistics, and the synthetic Criteo TSV of the benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from terarec.data.preprocess.hashindex import PackedIndex
from terarec.data.preprocess.transform import FitStats, Transform, Vocab

ROOT = Path(__file__).resolve().parents[2]


def test_packed_index_matches_a_dict():
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 1000, 50_000):
        keys = np.unique(rng.integers(1, 2**64 - 1, size, dtype=np.uint64))
        # clustered keys (hex text shares its high bytes) must still resolve
        keys = np.unique(np.concatenate([keys, np.arange(1, size // 3 + 2, dtype=np.uint64)]))
        ids = rng.permutation(keys.size).astype(np.int64) + 2
        idx = PackedIndex(keys, ids)
        probe = np.concatenate([keys, rng.integers(1, 2**64 - 1, 3000, dtype=np.uint64),
                                np.zeros(5, np.uint64)])
        rng.shuffle(probe)
        ref = dict(zip(keys.tolist(), ids.tolist()))
        want = [0 if v == 0 else ref.get(v, 1) for v in probe.tolist()]
        assert idx.lookup(probe, 1).tolist() == want
    with pytest.raises(ValueError):
        PackedIndex(np.array([0, 5], np.uint64), np.array([2, 3]))


def test_vocab_json_is_json_dumps(tmp_path):
    packed = np.ascontiguousarray(np.array([b"68fd1e64", b"ab", b"abc"], "S8")).view(">u8")
    arrays = {
        "full": np.ascontiguousarray(np.array([b"68fd1e64", b"0a519c5c"], "S8"))
        .view(">u8").astype(np.uint64),
        "short": packed.astype(np.uint64),
        "quote": np.array([b"a", b'de"f', b""], "S4"),
        "backslash": np.array([b"b\\c"], "S4"),
        "latin1": np.array([b"a\xe9", b"b"], "S4"),
        "nul": np.array([b"a\x00b"], "S4"),
        "del": np.array([b"\x7f", b"~"], "S1"),
        "long": np.array([b"abcdefghijk", b"z"], "S11"),
        "empty": np.zeros(0, np.uint64),
    }
    t = Transform(["label"], [], list(arrays))
    t.vocab = Vocab(arrays)
    assert t.slot_size_array == [a.size + 2 for a in arrays.values()]
    t.save(str(tmp_path))
    assert (tmp_path / "vocab.json").read_text() == json.dumps({k: t.vocab[k] for k in arrays})
    back = Transform.load(str(tmp_path))
    assert back.vocab == {k: t.vocab[k] for k in arrays}
    assert back.slot_size_array == t.slot_size_array


def test_fitstats_unfolded_sums_keep_the_order_of_additions():
    rng = np.random.default_rng(3)
    blocks = []
    for _ in range(9):
        x = rng.random(4) * 10.0 ** rng.integers(-3, 12, 4)
        blocks.append(FitStats(5, x, x * x, x, x, np.zeros(4, np.int64)))
    seq = FitStats()
    for b in blocks:
        seq = seq.merge(FitStats(**vars(b)))
    grouped = FitStats()
    for a in range(0, 9, 4):  # workers merge consecutive blocks without adding the sums
        task = FitStats()
        for b in blocks[a : a + 4]:
            task = task.merge(FitStats(**vars(b)), fold=False)
        grouped = grouped.merge(task)
    assert seq.dense_sum.tobytes() == grouped.dense_sum.tobytes()
    assert seq.dense_sq.tobytes() == grouped.dense_sq.tobytes()
    assert grouped.rows == 45 and not grouped.unfolded


def _bench():
    spec = importlib.util.spec_from_file_location("data_readers_bench",
                                                  ROOT / "benchmarks" / "data_readers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_criteo_tsv_is_criteo_shaped(tmp_path):
    pytest.importorskip("pyarrow")
    from terarec.data.preprocess import preprocess_criteo

    path = tmp_path / "syn.txt"
    _bench().synth_criteo_tsv(str(path), 12_345, block=5000)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 12_346
    rows = [ln.split(b"\t") for ln in lines[:-1]]
    assert {len(r) for r in rows} == {40}
    assert {r[0] for r in rows} == {b"0", b"1"}
    ints = [r[1:14] for r in rows]
    assert any(v == b"" for r in ints for v in r) and any(r[1].startswith(b"-") for r in ints)
    assert all(v == b"" or int(v) >= -3 for r in ints for v in r)
    cats = [v for r in rows for v in r[14:]]
    assert b"" in cats and all(v == b"" or (len(v) == 8 and int(v, 16) >= 0) for v in cats)
    res = preprocess_criteo(str(path), str(tmp_path / "o"), num_workers=1, progress=False)
    assert res.rows == 12_345 and res.bad_rows == 0


def test_fit_tasks_split_blocks_evenly():
    from terarec.data.preprocess.pipeline import _even_tasks

    pairs = [(("f", 1, 0, ("f", 0, 1), 100), 0) for _ in range(18)]
    sizes = [len(g) for g, _, _ in _even_tasks(pairs, 450, 4)]
    assert sizes == [4, 5, 4, 5]
    assert [len(g) for g, _, _ in _even_tasks(pairs, 250, 4)] == [2, 2, 2, 3] * 2  # <= target
    assert [len(g) for g, _, _ in _even_tasks(pairs[:3], 10**6, 8)] == [1, 1, 1]
    assert list(_even_tasks([], 10, 4)) == []

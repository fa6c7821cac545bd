"""The Parquet reader's fast conversion gives exactly the general path's chunks and errors."""

from __future__ import annotations

import numpy as np
import pytest

from terarec.data.readers import READERS, ReaderConfig
from terarec.data.readers.parquet import ParquetSource, _column_reduce, _FilePlan
from terarec.data.schema import DataSchema, SparseSpec
from terarec.errors import DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

N = 700
SIZES = [40, 1000, 7]


def _table(rng, key_types=(np.int64, np.uint32, np.int8), dense_type=np.float32) -> dict:
    cols = {"label": rng.integers(0, 2, N).astype(np.float32)}
    for i in range(3):
        cols[f"I{i + 1}"] = (rng.random(N) * 5).astype(dense_type)
    for s, (kt, size) in enumerate(zip(key_types, SIZES)):
        cols[f"C{s + 1}"] = rng.integers(0, size, N).astype(kt)
    return cols


def _schema(split: bool) -> DataSchema:
    if split:
        return DataSchema([1], ["label"], 3, "dense", [SparseSpec("a", [1, 1], True, 2),
                                                       SparseSpec("b", [1], True, 1)])
    return DataSchema([1], ["label"], 3, "dense", [SparseSpec("a", [1, 1, 1], True, 3)])


def _decode(path: str, general: bool, monkeypatch, sizes, i64: bool, split: bool):
    """Every row-group-sized and odd range of ``path``: arrays, or the error message."""
    cfg = ReaderConfig("Parquet", path, slot_size_array=sizes, i64_input_key=i64, num_workers=2)
    with monkeypatch.context() as m:
        if general:
            m.setattr(ParquetSource, "_fast_chunk", None)  # must not be reached
            m.setattr(ParquetSource, "_plan_of", lambda self, schema: _FilePlan(False, False))
        src = READERS.get("Parquet")(cfg, _schema(split))
        out = []
        for a, b in [(0, 300), (300, 600), (600, 700), (0, 700), (123, 456)]:
            try:
                (c,) = src.decode(path, a, b)
                out.append((c.labels, c.dense, c.keys, [np.asarray(ln) for ln in c.lengths]))
            except DataError as exc:
                out.append(str(exc))
        return out


def _same(x, y) -> None:
    assert len(x) == len(y)
    for u, v in zip(x, y):
        if isinstance(u, str) or isinstance(v, str):
            assert u == v
            continue
        for p, q in zip(u[:2], v[:2]):
            assert p.dtype == q.dtype and np.array_equal(p, q)
        for ps, qs in zip(u[2:], v[2:]):
            assert all(p.dtype == q.dtype and np.array_equal(p, q) for p, q in zip(ps, qs))


def _write(tmp_path, name: str, cols: dict) -> str:
    path = str(tmp_path / f"{name}.parquet")
    pq.write_table(pa.table(cols), path, row_group_size=300)
    return path


def _bad_files(tmp_path, rng) -> dict[str, str]:
    files = {"clean": _table(rng), "int_dense": _table(rng, dense_type=np.int32),
             "f64_dense": _table(rng, dense_type=np.float64),
             "all_i64": _table(rng, key_types=(np.int64,) * 3)}
    bad = {"nan": ("I2", 450, np.nan), "inf": ("I1", 699, np.inf), "negative": ("C1", 310, -4),
           "beyond": ("C3", 333, 7), "beyond_first": ("C2", 0, 5000),
           "huge": ("C1", 650, 1 << 40), "wrap": ("C3", 5, (1 << 63) - 2)}
    for name, (col, row, value) in bad.items():
        cols = _table(rng, key_types=(np.int64,) * 3)
        cols[col][row] = value
        files[name] = cols
    return {name: _write(tmp_path, name, cols) for name, cols in files.items()}


@pytest.mark.parametrize("sizes", [[], SIZES, [1 << 31, 1 << 31, 5]])
@pytest.mark.parametrize("i64", [False, True])
def test_fast_path_equals_general_path(tmp_path, monkeypatch, sizes, i64):
    rng = np.random.default_rng(0)
    for name, path in _bad_files(tmp_path, rng).items():
        for split in (False, True):
            fast = _decode(path, False, monkeypatch, sizes, i64, split)
            general = _decode(path, True, monkeypatch, sizes, i64, split)
            _same(fast, general)
            if name == "clean" and sizes == SIZES:  # the fast path decoded something here
                assert not isinstance(fast[0], str)


def test_fast_path_errors_name_row_and_field(tmp_path):
    rng = np.random.default_rng(1)
    files = _bad_files(tmp_path, rng)
    sch = _schema(False)

    def err(name: str, **kw) -> str:
        cfg = ReaderConfig("Parquet", files[name], num_workers=2, **kw)
        with pytest.raises(DataError) as ei:
            list(READERS.get("Parquet")(cfg, sch).decode(files[name], 300, 700))
        return str(ei.value)

    assert "row 450" in err("nan") and "field dense[1]" in err("nan")
    assert "row 310" in err("negative") and "field C1" in err("negative")
    msg = err("beyond", slot_size_array=SIZES)
    assert "row 333" in msg and "field C3" in msg and "beyond the slot size 7" in msg
    assert "does not fit 32 bits" in err("huge")


def test_column_reduce_matches_numpy():
    rng = np.random.default_rng(2)
    for n in (1, 63, 64, 65, 1000):
        m = rng.integers(-(1 << 40), 1 << 40, (n, 5))
        assert np.array_equal(_column_reduce(m, np.maximum), m.max(axis=0))
        assert np.array_equal(_column_reduce(m, np.minimum), m.min(axis=0))


def test_leaf_indices_and_reader_reuse(tmp_path):
    from terarec.data.readers import parquet as P

    paths = [("label",), ("I1",), ("C1", "list", "element"), ("C2",), ("x.y",)]
    assert P._leaf_indices(paths, ["C2", "label", "C1", "nope", "x.y"]) == [3, 0, 2, 4]
    rng = np.random.default_rng(4)
    path = _write(tmp_path, "reuse", _table(rng))
    cfg = ReaderConfig("Parquet", path, slot_size_array=SIZES, num_workers=2)
    src = READERS.get("Parquet")(cfg, _schema(False))
    first = [c.keys[0] for a, b in src.pieces(0, 0, N) for c in src.decode(path, a, b)]
    reader = P._OPEN.file[2]
    again = [c.keys[0] for a, b in src.pieces(0, 0, N) for c in src.decode(path, a, b)]
    assert P._OPEN.file[2] is reader  # one open per thread and file
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    # rewritten file, new source: read with its own footer, not the cached reader
    cols = _table(rng)
    cols["C1"][:] = 3
    path = _write(tmp_path, "reuse", cols)
    src = READERS.get("Parquet")(cfg, _schema(False))
    (c,) = src.decode(path, 0, 300)
    assert P._OPEN.file[2] is not reader
    assert (c.keys[0].reshape(-1, 3)[:, 0] == 3).all()

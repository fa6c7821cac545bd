"""Every writer -> reader round trip returns exactly the values written."""

from __future__ import annotations

import numpy as np
import pytest
from _data_helpers import SIZES, cat, make, read_all, schema, write

from terarec.data.readers import ReaderConfig

CASES = [
    # fmt, nnz, i64, check
    ("Norm", [1, 1, 1], False, "Sum"),
    ("Norm", [1, 3, 2], False, "Sum"),
    ("Norm", [1, 3, 2], True, "Non"),
    ("Norm", [2, 1, 4], False, "Non"),
    ("Norm", [1, 1, 1], True, "Sum"),
    ("Raw", [1, 1, 1], False, "Sum"),
    ("RawAsync", [1, 1, 1], False, "Sum"),
    ("RawAsync", [1, 3, 2], True, "Sum"),
    ("RawAsync", [2, 3, 2], False, "Sum"),
    ("Parquet", [1, 1, 1], True, "Sum"),
    ("Parquet", [1, 3, 2], False, "Sum"),
    ("Parquet", [2, 3, 2], True, "Sum"),
]


def expected_keys(fmt: str, c, nnz: list[int]):
    """Per-input (keys, lengths) as the reader must return them."""
    keys, ln = c.keys[0].copy(), c.lengths[0]
    if fmt in ("RawAsync", "Parquet"):
        offs = np.concatenate(([0], np.cumsum(SIZES)[:-1]))
        slot = np.repeat(np.tile(np.arange(3), len(c)), ln.reshape(-1))
        keys = keys + offs[slot]
    per_sample = ln.sum(1)
    start = np.concatenate(([0], np.cumsum(per_sample)[:-1]))
    a_tot, b_tot = ln[:, :2].sum(1), ln[:, 2]
    a = np.concatenate([keys[s : s + t] for s, t in zip(start, a_tot)])
    b = np.concatenate([keys[s + t : s + t + u] for s, t, u in zip(start, a_tot, b_tot)])
    return a, b, ln[:, :2].reshape(-1), ln[:, 2]


@pytest.mark.parametrize("fmt,nnz,i64,check", CASES)
def test_roundtrip_exact(tmp_path, fmt, nnz, i64, check):
    c = make(fmt, nnz)
    src = write(tmp_path, fmt, c, files=2 if fmt != "Raw" else 1, check_type=check,
                i64_input_key=i64)
    cfg = ReaderConfig(fmt, src, check_type=check, i64_input_key=i64,
                       slot_size_array=SIZES if fmt in ("RawAsync", "Parquet") else [],
                       num_workers=2)
    sch = schema(nnz, fixed=fmt.startswith("Raw"))
    got = read_all(cfg, sch, bs=300)
    assert [b.batch_size for b in got] == [300, 300, 300, 100]
    np.testing.assert_array_equal(cat(got, "labels"), c.labels)
    dense = np.log1p(c.dense) if fmt == "Raw" else c.dense
    np.testing.assert_array_equal(cat(got, "dense"), dense.astype(np.float32))
    a, b, la, lb = expected_keys(fmt, c, nnz)
    np.testing.assert_array_equal(cat(got, "a.keys"), a)
    np.testing.assert_array_equal(cat(got, "b.keys"), b)
    np.testing.assert_array_equal(cat(got, "a.lengths"), la)
    np.testing.assert_array_equal(cat(got, "b.lengths"), lb)
    for bt in got:
        assert bt.sparse["a"].keys.dtype.is_floating_point is False
        assert str(bt.sparse["a"].keys.dtype) == "torch.int64"
        assert bt.sparse["a"].offsets.numel() == bt.batch_size * 2 + 1


def test_norm_checksum_layout_bytes(tmp_path):
    """A Check_t.Sum file starts with int32 64, the 64-byte header and its checksum byte."""
    c = make("Norm", [1, 1, 1], n=3)
    src = write(tmp_path, "Norm", c, check_type="Sum")
    raw = np.fromfile(str(tmp_path / "d0.bin"), np.uint8)
    assert raw[:4].view("<i4")[0] == 64
    hdr = raw[4:68].view("<i8")
    assert list(hdr[:5]) == [1, 3, 1, 4, 3] and not hdr[5:].any()
    assert raw[68] == int(raw[4:68].sum()) & 0xFF
    first_len = raw[69:73].view("<i4")[0]
    assert first_len == 4 * (1 + 4 + 3 + 3)  # label, dense, 3 x (nnz + key)
    assert src.endswith(".txt")


def test_raw_float_label_dense(tmp_path):
    c = make("RawAsync", [1, 1, 1])
    src = write(tmp_path, "Raw", c, float_label_dense=True)
    got = read_all(ReaderConfig("Raw", src, float_label_dense=True), schema([1, 1, 1], True))
    np.testing.assert_array_equal(cat(got, "dense"), c.dense)
    # Raw keeps per-slot ids (the one-hot embedding adds offsets)
    np.testing.assert_array_equal(cat(got, "b.keys"), c.keys[0].reshape(-1, 3)[:, 2])


def test_raw_async_int_dense_log(tmp_path):
    c = make("RawAsync", [1, 1, 1])
    c.dense[:] = np.abs(np.round(c.dense))
    src = write(tmp_path, "RawAsync", c, is_dense_float=False)
    got = read_all(ReaderConfig("RawAsync", src, is_dense_float=False), schema([1, 1, 1], True))
    np.testing.assert_allclose(cat(got, "dense"), np.log1p(c.dense), rtol=1e-6)


def test_parquet_plain_dir_inferred_schema(tmp_path):
    """Plain parquet files in a directory with no side files; columns inferred by name/type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 50
    rng = np.random.default_rng(0)
    t = pa.table({
        "click": rng.integers(0, 2, n).astype(np.float32),
        "I1": rng.random(n).astype(np.float32), "price": rng.random(n),  # float -> dense
        "user": rng.integers(0, 10, n), "C2": rng.integers(0, 5, n).astype(np.int32),
        "tags": pa.array([[1, 2], [], [3]] * 16 + [[4], [5]], pa.list_(pa.int64())),
    })
    d = tmp_path / "plain"
    d.mkdir()
    pq.write_table(t, str(d / "a.parquet"))
    from terarec.data.schema import DataSchema, SparseSpec

    sch = DataSchema([1], ["label"], 2, "dense", [SparseSpec("s", [1, 1, 2], False, 3)])
    got = read_all(ReaderConfig("Parquet", str(d)), sch, bs=16)
    np.testing.assert_array_equal(cat(got, "labels")[:, 0], t["click"].to_numpy())
    np.testing.assert_allclose(cat(got, "dense")[:, 1], t["price"].to_numpy().astype(np.float32))
    ln = cat(got, "s.lengths").reshape(n, 3)
    assert list(ln[:3, 2]) == [2, 0, 1]
    keys = cat(got, "s.keys")
    assert list(keys[:3]) == [t["user"][0].as_py(), t["C2"][0].as_py(), 1]

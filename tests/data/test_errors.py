"""Bad input gives a DataError naming the file and the location (row / byte offset / field)."""

from __future__ import annotations

import numpy as np
import pytest
from _data_helpers import SIZES, make, read_all, schema, write

from terarec.data.readers import ReaderConfig, create_reader
from terarec.data.writers import write_file_list
from terarec.errors import ConfigError, DataError

ONE = [1, 1, 1]


def _read(cfg, sch=None):
    return read_all(cfg, sch or schema(ONE, True))


def _err(cfg, *needles, sch=None):
    with pytest.raises(DataError) as ei:
        _read(cfg, sch)
    msg = str(ei.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_norm_truncated_sum(tmp_path):
    src = write(tmp_path, "Norm", make("Norm", [1, 3, 2], n=20))
    p = tmp_path / "d0.bin"
    p.write_bytes(p.read_bytes()[:-30])
    _err(ReaderConfig("Norm", src), "d0.bin", "row 19", "byte offset", "truncated",
         sch=schema([1, 3, 2], False))


def test_norm_truncated_non(tmp_path):
    src = write(tmp_path, "Norm", make("Norm", [1, 3, 2], n=20), check_type="Non")
    p = tmp_path / "d0.bin"
    p.write_bytes(p.read_bytes()[:-8])
    _err(ReaderConfig("Norm", src, check_type="Non"), "d0.bin", "row", "byte offset",
         sch=schema([1, 3, 2], False))


def test_norm_checksum_mismatch(tmp_path):
    src = write(tmp_path, "Norm", make("Norm", ONE, n=20))
    p = tmp_path / "d0.bin"
    raw = bytearray(p.read_bytes())
    raw[69 + 5 * 48 + 10] ^= 0xFF  # a dense byte of sample 5 (records of 4+11*4+1 = 49 bytes)
    p.write_bytes(bytes(raw))
    _err(ReaderConfig("Norm", src), "d0.bin", "checksum mismatch", "field checksum")


def test_norm_header_checks(tmp_path):
    src = write(tmp_path, "Norm", make("Norm", ONE, n=5))
    _err(ReaderConfig("Norm", src, check_type="Non"), "d0.bin", "error_check", "Check_t.Sum")
    _err(ReaderConfig("Norm", src), "slot_num is 3, expected 4", "field slot_num",
         sch=_four_slots())
    src2 = write(tmp_path, "Norm", make("Norm", ONE, n=5), name="non", check_type="Non")
    _err(ReaderConfig("Norm", src2), "non0.bin", "looks like Check_t.Non", "byte offset 0")
    p = tmp_path / "non0.bin"
    p.write_bytes(b"garbage")
    _err(ReaderConfig("Norm", src2, check_type="Non"), "non0.bin", "truncated header")


def _four_slots():
    from terarec.data.schema import DataSchema, SparseSpec

    return DataSchema([1], ["label"], 4, "dense", [SparseSpec("a", 1, True, 4)])


def test_norm_nnz_beyond_max_and_negative_key(tmp_path):
    src = write(tmp_path, "Norm", make("Norm", [1, 3, 2], n=10))
    _err(ReaderConfig("Norm", src), "nnz", "outside 0..1", "field slot 1 nnz", "row",
         sch=schema([1, 1, 2], False))
    c = make("Norm", ONE, n=10)
    c.keys[0][7] = -5
    src = write(tmp_path, "Norm", c, name="neg", i64_input_key=True)
    _err(ReaderConfig("Norm", src, i64_input_key=True), "neg0.bin", "key -5 is negative", "row 2")


def test_nan_dense(tmp_path):
    c = make("Parquet", ONE, n=10)
    c.dense[4, 2] = np.nan
    src = write(tmp_path, "Parquet", c)
    _err(ReaderConfig("Parquet", src), "d0.parquet", "row 4", "field dense[2]", "finite")
    c = make("Norm", ONE, n=10)
    c.dense[6, 1] = np.inf
    src = write(tmp_path, "Norm", c, name="inf")
    _err(ReaderConfig("Norm", src), "inf0.bin", "row 6", "dense[1]")


def test_raw_truncated_and_num_samples(tmp_path):
    src = write(tmp_path, "Raw", make("Raw", ONE, n=10))
    _err(ReaderConfig("Raw", src, num_samples=11), "num_samples=11", "only 10")
    p = tmp_path / "d0.bin"
    p.write_bytes(p.read_bytes()[:-4])
    _err(ReaderConfig("Raw", src), "d0.bin", "row 9", "byte offset 288", "incomplete")


def test_raw_negative_int_dense(tmp_path):
    c = make("Raw", ONE, n=10)
    c.dense[3, 1] = -2
    src = write(tmp_path, "Raw", c)
    _err(ReaderConfig("Raw", src), "row 3", "dense[1]", "negative")


def test_key_beyond_slot_size(tmp_path):
    c = make("RawAsync", ONE, n=10)
    src = write(tmp_path, "RawAsync", c)
    small = [100, 3, 50]
    _err(ReaderConfig("RawAsync", src, slot_size_array=small), "d0.bin", "beyond the slot size 3",
         "slot 1")
    src = write(tmp_path, "Parquet", make("Parquet", [1, 3, 2], n=10), name="pq")
    _err(ReaderConfig("Parquet", src, slot_size_array=small), "pq0.parquet", "field C2",
         "beyond the slot size 3", sch=schema([1, 3, 2], False))
    src = write(tmp_path, "Raw", make("Raw", ONE, n=10), name="raw")
    _err(ReaderConfig("Raw", src, slot_size_array=small), "raw0.bin", "slot 1", "slot size 3")


def test_parquet_negative_key_and_32bit(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"label": np.zeros(4, np.float32), "I1": np.ones(4, np.float32),
                  "C1": np.array([1, 2, -7, 3]), "C2": np.array([1, 2, 3, 1 << 40])})
    pq.write_table(t, str(tmp_path / "x.parquet"))
    from terarec.data.schema import DataSchema, SparseSpec

    sch = DataSchema([1], ["label"], 1, "dense", [SparseSpec("s", 1, True, 2)])
    _err(ReaderConfig("Parquet", str(tmp_path / "x.parquet")), "x.parquet", "row 2", "field C1",
         "-7 is negative", sch=sch)


def test_parquet_wrong_columns(tmp_path):
    src = write(tmp_path, "Parquet", make("Parquet", ONE, n=10))
    _err(ReaderConfig("Parquet", src), "3 categorical columns", "4 slots", sch=_four_slots())


def test_file_lists(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _err(ReaderConfig("Norm", str(empty)), "empty.txt", "empty")
    zero = tmp_path / "zero.txt"
    zero.write_text("0\n")
    _err(ReaderConfig("Parquet", str(zero)), "zero.txt", "0 files")
    short = tmp_path / "short.txt"
    short.write_text("3\na\nb\n")
    _err(ReaderConfig("Norm", str(short)), "short.txt", "says 3 files")
    missing = tmp_path / "missing.txt"
    write_file_list(str(missing), [str(tmp_path / "nope.data")])
    _err(ReaderConfig("Norm", str(missing)), "nope.data", "does not exist", "missing.txt")
    _err(ReaderConfig("Raw", str(tmp_path / "none.bin")), "none.bin", "does not exist")
    _err(ReaderConfig("Norm", str(tmp_path / "nolist.txt")), "nolist.txt", "does not exist")


def test_criteo_tsv_bad_rows(tmp_path):
    good = "0\t1\t2\t\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13" + "\t68fd1e64" * 26 + "\n"
    p = tmp_path / "bad.tsv"
    p.write_text(good * 3 + good.replace("\t5\t", "\tfive\t") + good)
    from terarec.data.schema import DataSchema, SparseSpec

    sch = DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])
    _err(ReaderConfig("CriteoTSV", str(p)), "bad.tsv", "row 4", "field I5", "'five'", sch=sch)
    p.write_text(good * 2 + "1\t2\t3\n")
    _err(ReaderConfig("CriteoTSV", str(p)), "bad.tsv", "row 3", "expected 40 fields, received 3",
         sch=sch)
    p.write_text(good + good.replace("68fd1e64", "zz", 1))
    _err(ReaderConfig("CriteoTSV", str(p)), "row 2", "field C1", "hexadecimal", sch=sch)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="format"):
        create_reader(ReaderConfig("Nrm", "x"), schema(ONE, True), 4)
    with pytest.raises(ConfigError, match="check_type"):
        ReaderConfig("Norm", "x", check_type="Crc")
    src = write(tmp_path, "RawAsync", make("RawAsync", ONE, n=4))
    with pytest.raises(ConfigError, match="rank"):
        create_reader(ReaderConfig("RawAsync", src), schema(ONE, True), 4, rank=2, world_size=2)
    assert SIZES

"""HugeCTR's DataGenerator (exact arguments) and generate_synthetic: files readable, teacher AUC."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from _data_helpers import cat, read_all

from terarec.data.readers import ReaderConfig
from terarec.data.schema import DataSchema, SparseSpec
from terarec.data.synthetic import generate_synthetic
from terarec.enums import Check_t, DataReaderType_t, Distribution_t, PowerLaw_t
from terarec.tools import DataGenerator, DataGeneratorParams


def test_signature_matches_hugectr():
    names = list(inspect.signature(DataGeneratorParams).parameters)[:20]
    assert names == [
        "format", "label_dim", "dense_dim", "num_slot", "i64_input_key", "source", "eval_source",
        "slot_size_array", "nnz_array", "check_type", "dist_type", "power_law_type", "alpha",
        "num_files", "eval_num_files", "num_samples_per_file", "num_samples", "eval_num_samples",
        "float_label_dense", "num_threads"]
    p = DataGeneratorParams(DataReaderType_t.Norm, 1, 13, 26, False, "a/l.txt", "a/t.txt",
                            [10] * 26)
    assert (p.check_type, p.dist_type, p.power_law_type) == (
        Check_t.Sum, Distribution_t.PowerLaw, PowerLaw_t.Specific)
    assert (p.alpha, p.num_files, p.eval_num_files, p.num_samples_per_file, p.num_samples,
            p.eval_num_samples, p.float_label_dense, p.num_threads) == (
        1.2, 128, 32, 40960, 5242880, 1310720, False, 1)


@pytest.mark.parametrize("fmt", ["Norm", "Parquet", "Raw", "RawAsync"])
def test_data_generator_each_format(tmp_path, fmt, capsys):
    sizes = [50, 300, 20, 7]
    nnz = [1, 1, 1, 1] if fmt == "Raw" else [1, 3, 2, 1]
    i64 = fmt == "Parquet"
    ext = {"Norm": "file_list.txt", "Parquet": "file_list.txt"}.get(fmt, "train_data.bin")
    src = str(tmp_path / ext)
    ev = str(tmp_path / ("file_list_test.txt" if fmt in ("Norm", "Parquet") else "val_data.bin"))
    gen = DataGenerator(DataGeneratorParams(
        getattr(DataReaderType_t, fmt), 1, 5, 4, i64, src, ev, sizes, nnz,
        num_files=2, eval_num_files=1, num_samples_per_file=1500, num_samples=3000,
        eval_num_samples=1500))
    gen.generate()
    assert "teacher (best reachable) AUC" in capsys.readouterr().out
    assert gen.best_auc > 0.7
    sch = DataSchema([1], ["label"], 5, "dense",
                     [SparseSpec("data1", nnz, fmt.startswith("Raw"), 4)])
    cfg = ReaderConfig(fmt, src, i64_input_key=i64,
                       slot_size_array=sizes if fmt in ("Parquet", "RawAsync") else [])
    got = read_all(cfg, sch, 500)
    assert sum(b.batch_size for b in got) == 3000
    keys = cat(got, "data1.keys")
    lens = cat(got, "data1.lengths").reshape(-1, 4)
    slot = np.repeat(np.tile(np.arange(4), 3000), lens.reshape(-1))
    if fmt == "Norm":
        assert (keys % 4 == slot).all()  # HugeCTR's Norm convention
        assert (keys // 4 < np.array(sizes)[slot]).all()
    elif fmt != "Raw":
        offs = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        local = keys - offs[slot]
        assert ((local >= 0) & (local < np.array(sizes)[slot])).all()
    if fmt != "RawAsync" and fmt != "Raw":
        assert (lens >= 1).all() and (lens <= np.array(nnz)).all()
    # power law: key 0 of the big slot is the most frequent
    big = keys[slot == 1]
    vals, counts = np.unique(big, return_counts=True)
    assert vals[np.argmax(counts)] == big.min()
    labels = cat(got, "labels")
    assert 0.1 < labels.mean() < 0.6


def test_raw_without_teacher_is_hugectr_pattern(tmp_path):
    gen = DataGenerator(DataGeneratorParams(
        DataReaderType_t.Raw, 1, 3, 2, False, str(tmp_path / "t.bin"), str(tmp_path / "v.bin"),
        [10, 10], num_samples=10, eval_num_samples=4, teacher=False))
    gen.generate()
    sch = DataSchema([1], ["label"], 3, "dense", [SparseSpec("d", 1, True, 2)])
    got = read_all(ReaderConfig("Raw", str(tmp_path / "t.bin")), sch, 10)
    np.testing.assert_array_equal(cat(got, "labels")[:, 0], np.arange(10) % 2)
    np.testing.assert_allclose(cat(got, "dense")[0], np.log1p([0, 1, 2]), rtol=1e-6)


def test_generate_synthetic_api(tmp_path):
    out = generate_synthetic(str(tmp_path), "Parquet", num_samples=4000,
                             slot_size_array=[100] * 5, dense_dim=3, nnz_per_slot=1, seed=1)
    assert out["best_auc"] > 0.7 and out["eval_best_auc"] > 0.7
    assert out["source"].endswith("file_list.txt") and out["slot_size_array"] == [100] * 5
    sch = DataSchema([1], ["label"], 3, "dense", [SparseSpec("data1", 1, True, 5)])
    got = read_all(ReaderConfig("Parquet", out["eval_source"], i64_input_key=True,
                                slot_size_array=out["slot_size_array"]), sch, 256)
    assert sum(b.batch_size for b in got) == out["eval_num_samples"] == 800
    # same seed -> same data
    again = generate_synthetic(str(tmp_path / "b"), "Parquet", num_samples=4000,
                               slot_size_array=[100] * 5, dense_dim=3, seed=1)
    assert again["best_auc"] == out["best_auc"]

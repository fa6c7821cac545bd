"""Preprocessing of the real Criteo / Frappe / Avazu / MovieLens samples and the CLI."""

from __future__ import annotations

import argparse
import gzip
import shutil

import numpy as np
import pytest
from _data_helpers import CRITEO, SHARED, cat, need, read_all

from terarec.data.preprocess import (
    apply_preprocessing,
    preprocess_criteo,
    preprocess_csv,
    preprocess_libsvm,
)
from terarec.data.readers import create_reader
from terarec.errors import DataError


def _cat_columns(path, rows):
    with open(path) as fh:
        lines = [ln.rstrip("\n").split("\t") for ln in fh][:rows]
    return [[ln[14 + j] for ln in lines] for j in range(26)]


def test_criteo_parquet_8000_2000(tmp_path):
    path = str(need(CRITEO))
    res = preprocess_criteo(path, str(tmp_path), eval_last_rows=2000, num_workers=2,
                            block_bytes=300_000, rows_per_file=3000, progress=False)
    assert (res.rows, res.eval_rows, res.bad_rows) == (8000, 2000, 0)
    cols = _cat_columns(path, 8000)
    want = [len({v for v in col if v}) + 2 for col in cols]
    assert res.slot_size_array == want
    assert len(res.train_files) == 3
    train = read_all(res.reader_config(), res.schema(), 1000)
    assert sum(b.batch_size for b in train) == 8000
    keys = cat(train, "data1.keys").reshape(-1, 26)
    offs = np.concatenate(([0], np.cumsum(want)[:-1]))
    local = keys - offs
    assert ((local >= 0) & (local < np.array(want))).all()
    assert (local[:, 0] >= 2).all()  # C1 is never missing and the train vocab covers it
    # missing -> 0
    miss = np.array([[v == "" for v in col] for col in cols]).T
    assert (local[miss] == 0).all() and (local[~miss] >= 2).all()
    ev = read_all(res.reader_config(eval=True), res.schema(), 1000)
    assert sum(b.batch_size for b in ev) == 2000
    lab = cat(ev, "labels")[:, 0]
    with open(path) as fh:
        want_lab = [float(ln.split("\t", 1)[0]) for ln in fh][8000:]
    np.testing.assert_array_equal(lab, want_lab)
    # the saved transform, applied again (inference path), gives the same eval ids
    gz = tmp_path / "eval.txt.gz"
    with open(path, "rb") as fh, gzip.open(gz, "wb") as out:
        out.writelines(fh.readlines()[8000:])
    again = apply_preprocessing(str(gz), str(tmp_path / "again"), str(tmp_path), num_workers=1,
                                progress=False)
    rd = create_reader(again.reader_config(slot_size_array=res.slot_size_array), res.schema(),
                       1000, repeat=False)
    np.testing.assert_array_equal(cat(list(rd), "data1.keys"), cat(ev, "data1.keys"))


def test_criteo_bad_rows_raise_and_skip(tmp_path):
    path = str(need(CRITEO))
    bad = tmp_path / "bad.txt"
    with open(path) as fh:
        lines = fh.readlines()[:300]
    lines[41] = "x" + lines[41]
    lines[99] = "1\t2\n"
    bad.write_text("".join(lines))
    with pytest.raises(DataError, match=r"bad.txt.*row 42.*label.*'x[01]'"):
        preprocess_criteo(str(bad), str(tmp_path / "o"), num_workers=1, progress=False)
    res = preprocess_criteo(str(bad), str(tmp_path / "o2"), on_error="skip", num_workers=1,
                            progress=False)
    assert res.rows == 298 and res.bad_rows == 2
    assert sorted(line for _, line, _ in res.bad_examples) == [42, 100]
    assert "bad rows: 2" in res.summary() and "slot_size_array = [" in res.summary()


def test_criteo_hash_and_standardize_raw_norm(tmp_path):
    path = str(need(CRITEO))
    small = tmp_path / "small.txt"
    with open(path) as fh:
        small.write_text("".join(fh.readlines()[:1000]))
    for fmt in ("raw", "norm"):
        res = preprocess_criteo(str(small), str(tmp_path / fmt), fmt, hash_buckets=64,
                                dense_mode="standardize", num_workers=1, progress=False,
                                eval_last_rows=100)
        assert res.slot_size_array == [64] * 26
        got = read_all(res.reader_config(), res.schema(), 300)
        d = cat(got, "dense")
        assert abs(d.mean()) < 0.2 and sum(b.batch_size for b in got) == 900
        keys = cat(got, "data1.keys").reshape(-1, 26)
        assert ((keys - np.arange(26) * 64 >= 0) & (keys - np.arange(26) * 64 < 64)).all()


def test_frappe_libsvm(tmp_path):
    tr = str(need(SHARED / "frappe" / "frappe.validation.libfm"))
    te = str(SHARED / "frappe" / "frappe.test.libfm")
    res = preprocess_libsvm(tr, str(tmp_path), eval_inputs=te, num_workers=2, progress=False)
    assert (res.rows, res.eval_rows, res.dense_dim) == (57722, 28860, 0)
    assert len(res.slot_size_array) == 10
    ev = read_all(res.reader_config(eval=True), res.schema(), 4096)
    lab = cat(ev, "labels")
    assert set(np.unique(lab)) == {0.0, 1.0} and 0.25 < lab.mean() < 0.4


def test_avazu_and_movielens_csv(tmp_path):
    a1 = str(need(SHARED / "avazu_head10k" / "avazu_train_rows_1-8999.csv"))
    a2 = str(SHARED / "avazu_head10k" / "avazu_train_rows_9000-9999_noheader.csv")
    cats = ["hour", "C1", "banner_pos", "site_id", "site_domain", "app_id", "device_model",
            "C14", "C15", "C16"]
    res = preprocess_csv([a1, a2], str(tmp_path / "a"), label="click", cats=cats,
                         eval_inputs=None, eval_last_rows=999, num_workers=1, progress=False)
    assert (res.rows, res.eval_rows) == (9000, 999)
    got = read_all(res.reader_config(), res.schema(), 1000)
    assert abs(cat(got, "labels").mean() - 0.17) < 0.02
    ml = str(need(SHARED / "movielens_100k" / "ml-100k.inter"))
    res = preprocess_csv(ml, str(tmp_path / "m"), label="rating:float",
                         cats=["user_id:token", "item_id:token"], sep="\t", label_threshold=4,
                         eval_last_rows=10_000, num_workers=2, progress=False)
    assert res.rows == 90_000 and res.slot_size_array[0] == 943 + 2
    lab = cat(read_all(res.reader_config(), res.schema(), 10_000), "labels")
    assert abs(lab.mean() - 0.554) < 0.02


def test_cli_register_and_run(tmp_path, capsys):
    from terarec.cli import datagen, preprocess

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    datagen.register(sub)
    preprocess.register(sub)
    args = parser.parse_args(["datagen", str(tmp_path / "g"), "--format", "Norm",
                              "--num-samples", "2000", "--slot-size-array", "10,20,30",
                              "--nnz", "1,2,1", "--dense-dim", "2"])
    assert args.func(args) == 0
    assert '"best_auc"' in capsys.readouterr().out
    src = str(need(CRITEO))
    small = tmp_path / "s.txt"
    with open(src) as fh:
        small.write_text("".join(fh.readlines()[:500]))
    args = parser.parse_args(["preprocess", "criteo", str(small), "-o", str(tmp_path / "p"),
                              "--eval-last-rows", "100", "--workers", "1", "--quiet"])
    assert args.func(args) == 0
    assert "slot_size_array = [" in capsys.readouterr().out
    assert shutil.which("python")

"""Preprocessing workers write their own part files: the data read back does not depend on the
number of workers, and the parts are listed in input order."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
from _data_helpers import read_all

from terarec.data.preprocess import preprocess_csv
from terarec.data.preprocess.pipeline import _part_tasks
from terarec.errors import DataError

pytest.importorskip("pyarrow")

ROWS = 2400


def _csv(tmp_path, name: str = "in.csv", first: int = 0, rows: int = ROWS) -> str:
    """Rows whose label and dense value give their input position (checked after reading)."""
    rng = np.random.default_rng(first)
    lines = ["label,x,c1,c2"]
    for i in range(first, first + rows):
        lines.append(f"{i % 2},{i},v{rng.integers(0, 40)},w{rng.integers(0, 300) if i % 9 else ''}")
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def _run(inputs, out, fmt: str, workers: int, **kw):
    return preprocess_csv(inputs, str(out), fmt, label="label", cats=["c1", "c2"], dense=["x"],
                          dense_mode="none", block_bytes=4096, rows_per_file=500,
                          num_workers=workers, progress=False, **kw)


def _arrays(res, eval: bool):
    got = read_all(res.reader_config(eval=eval, num_workers=1), res.schema(), 333)
    if not got:
        return None
    return [np.concatenate([getattr(b, f).numpy() for b in got]) for f in ("labels", "dense")] + \
        [np.concatenate([b.sparse["data1"].keys.numpy() for b in got])]


@pytest.mark.parametrize("fmt", ["parquet", "norm", "raw"])
def test_several_workers_write_the_same_data_as_one(tmp_path, fmt):
    src = _csv(tmp_path)
    one = _run(src, tmp_path / "w1", fmt, 1, eval_last_rows=300)
    three = _run(src, tmp_path / "w3", fmt, 3, eval_last_rows=300)
    assert (one.rows, one.eval_rows) == (three.rows, three.eval_rows) == (ROWS - 300, 300)
    if fmt != "raw":  # several parts, written by several processes
        assert len(three.train_files) > 3 and len(three.eval_files) >= 1
        assert all(os.path.exists(f) for f in three.train_files + three.eval_files)
    for eval in (False, True):
        a, b = _arrays(one, eval), _arrays(three, eval)
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and np.array_equal(x, y)
        # input order: the dense value is the row's position in the input
        first = ROWS - 300 if eval else 0
        np.testing.assert_array_equal(b[1][:, 0], np.arange(first, first + len(b[1])))


def test_gzip_and_eval_inputs_parts(tmp_path):
    plain = _csv(tmp_path)
    gz = str(tmp_path / "more.csv.gz")
    with open(_csv(tmp_path, "more.csv", ROWS, 900), "rb") as fh, gzip.open(gz, "wb") as out:
        out.write(fh.read())
    ev = _csv(tmp_path, "ev.csv", 10_000, 400)
    res = [_run([plain, gz], tmp_path / f"o{w}", "parquet", w, eval_inputs=[ev]) for w in (1, 2)]
    assert res[0].rows == res[1].rows == ROWS + 900 and res[1].eval_rows == 400
    for eval in (False, True):
        a, b = _arrays(res[0], eval), _arrays(res[1], eval)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    dense = _arrays(res[1], False)[1][:, 0]
    np.testing.assert_array_equal(dense, np.arange(ROWS + 900))


def test_bad_rows_skip_and_raise_with_parts(tmp_path):
    src = tmp_path / "bad.csv"
    with open(_csv(tmp_path)) as fh:
        lines = fh.read().splitlines()
    lines[700] = "1,notanumber,v1,w1"
    lines[1800] = "1,2"
    src.write_text("\n".join(lines) + "\n")
    got = [_run(str(src), tmp_path / f"s{w}", "norm", w, on_error="skip") for w in (1, 3)]
    assert got[0].rows == got[1].rows == ROWS - 2
    assert got[0].bad_examples == got[1].bad_examples
    assert [line for _, line, _ in got[1].bad_examples] == [701, 1801]
    with pytest.raises(DataError, match=r"bad\.csv.*row 701.*field x"):
        _run(str(src), tmp_path / "r", "parquet", 3)


def test_part_tasks_group_whole_blocks():
    def block(n: int, gz: bool = False):
        return ("f", 1, 0, b"x" if gz else ("f", 0, 1), n)

    items = [(block(n), 0) for n in (100, 150, 300, 50, 60)]
    groups = [[b[0][4] for b in g] for g, _, _ in _part_tasks(iter(items), 250, 7)]
    assert groups == [[100, 150], [300], [50, 60]]
    items = [(block(100), 0), (block(100, gz=True), 0), (block(100), 0), (block(100), 0)]
    tasks = list(_part_tasks(iter(items), 150, 7))
    assert [len(g) for g, _, _ in tasks] == [1, 1, 2] and [k for _, k, _ in tasks] == [0, 1, 2]

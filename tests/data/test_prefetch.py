"""The model's ReaderSlot reads through the background Prefetcher: order, epoch / repeat mode,
errors with their original message, no leaked or hanging threads. Plus the pyarrow.csv text fast
path: identical output and errors to the numpy parser."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest

from terarec.compat.reader import DataReaderParams
from terarec.compat.readers import ReaderSlot
from terarec.data import arrowtext
from terarec.data.loader import live_threads
from terarec.data.readers import ReaderConfig, create_reader
from terarec.data.schema import DataSchema, SparseSpec
from terarec.errors import DataError
from tests.data._data_helpers import CRITEO, make, need, schema, write

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model(src: str, sch, repeat: bool, bs: int = 100, num_workers: int = 2):
    params = DataReaderParams(data_reader_type="Parquet", source=[src], eval_source=src,
                              check_type="Non", slot_size_array=[100, 2000, 50],
                              num_workers=num_workers)
    solver = SimpleNamespace(batchsize=bs, batchsize_eval=bs, repeat_dataset=repeat,
                             i64_input_key=True, seed=0, drop_incomplete_batch=True)
    return SimpleNamespace(reader_params=params, spec=SimpleNamespace(schema=sch),
                           solver=solver, rank=0, world_size=1, device="cpu")


_BASELINE: set = set()


@pytest.fixture(autouse=True)
def _threads_of_earlier_tests():
    """Worker threads that other tests' models left running are not this test's leaks."""
    _BASELINE.clear()
    _BASELINE.update(live_threads())
    yield


def _wait_no_threads(timeout: float = 10.0) -> list:
    """Worker threads started by this test that are still alive after ``timeout``."""
    end = time.time() + timeout
    while [t for t in live_threads() if t not in _BASELINE] and time.time() < end:
        time.sleep(0.05)
    return [t for t in live_threads() if t not in _BASELINE]


@pytest.fixture
def parquet_src(tmp_path):
    return write(tmp_path, "Parquet", make("Parquet", [1, 1, 1], n=1000), files=3)


def test_slot_epoch_mode_matches_reader(parquet_src):
    sch = schema([1, 1, 1], True)
    slot = ReaderSlot(_model(parquet_src, sch, repeat=False), train=True)
    for _ in range(2):  # two epochs: same batches as the plain reader, then None
        got = []
        while (b := slot.next_batch()) is not None:
            got.append(b.dense[:, 0].numpy())
        assert slot.next_batch() is not None  # exhausted -> a new epoch starts
        slot.restart()
        np.testing.assert_array_equal(np.concatenate(got), np.arange(1000))
    slot.close()
    assert not _wait_no_threads()
    once = np.concatenate([b.dense[:, 0].numpy() for b in slot.iterate_once()])
    np.testing.assert_array_equal(once, np.arange(1000))
    assert not _wait_no_threads()


def test_slot_repeat_mode_and_close(parquet_src):
    sch = schema([1, 1, 1], True)
    slot = ReaderSlot(_model(parquet_src, sch, repeat=True, bs=300), train=True)
    ids = np.concatenate([slot.next_batch().dense[:, 0].numpy() for _ in range(5)])
    np.testing.assert_array_equal(ids, np.arange(1500) % 1000)  # wraps around
    assert live_threads()  # reading ahead in the background
    slot.close()
    assert not _wait_no_threads()
    assert slot.next_batch() is not None  # usable again after close (starts over)
    slot.set_source(parquet_src)
    assert not _wait_no_threads()


@pytest.mark.gpu
def test_slot_cuda_prefetch(parquet_src):
    import torch

    sch = schema([1, 1, 1], True)
    model = _model(parquet_src, sch, repeat=False)
    model.device = "cuda"
    slot = ReaderSlot(model, train=True)
    got = []
    for _ in range(2):
        while (b := slot.next_batch()) is not None:
            assert b.dense.is_cuda and b.sparse["a"].keys.is_cuda and b.labels.is_cuda
            torch.cuda._sleep(2_000_000)  # a slow "training step" while the next copy runs
            got.append((b.dense[:, 0] * 1).cpu().numpy())
        slot.restart()
    np.testing.assert_array_equal(np.concatenate(got), np.tile(np.arange(1000), 2))
    ev = np.concatenate([b.dense[:, 0].cpu().numpy() for b in slot.iterate_once()])
    np.testing.assert_array_equal(ev, np.arange(1000))
    slot.close()
    assert not _wait_no_threads()


def test_slot_worker_error_surfaces_with_location(tmp_path):
    sch = DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])
    good = "0\t1\t2\t\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13" + "\t68fd1e64" * 26 + "\n"
    p = tmp_path / "bad.tsv"
    p.write_text(good * 3 + good.replace("\t5\t", "\tfive\t") + good)
    model = _model(str(p), sch, repeat=True, bs=2)
    model.reader_params.data_reader_type = "CriteoTSV"
    model.reader_params.slot_size_array = []
    slot = ReaderSlot(model, train=True)
    with pytest.raises(DataError) as ei:
        for _ in range(10):
            slot.next_batch()
    msg = str(ei.value)
    assert "bad.tsv" in msg and "row 4" in msg and "field I5" in msg and "'five'" in msg
    assert not _wait_no_threads()
    assert slot.next_batch() is None  # like a dead generator: the source ended


def test_no_hang_at_interpreter_exit(parquet_src):
    code = textwrap.dedent(f"""
        from types import SimpleNamespace
        from tests.data.test_prefetch import _model
        from tests.data._data_helpers import schema
        from terarec.compat.readers import ReaderSlot
        slot = ReaderSlot(_model({parquet_src!r}, schema([1, 1, 1], True), repeat=True), True)
        slot.next_batch()
        it = slot.iterate_once(); next(it)
        print("ok")
    """)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout and time.time() - t0 < 30


# -- text fast path ------------------------------------------------------------------------
needs_arrow = pytest.mark.skipif(not arrowtext.available(), reason="pyarrow not installed")


def _criteo_sch():
    return DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])


def _read_tsv(path: str, parser: str, monkeypatch, **kw):
    monkeypatch.setenv("TERAREC_TEXT_PARSER", parser)
    r = create_reader(ReaderConfig("CriteoTSV", path, **kw), _criteo_sch(), 1000, repeat=False,
                      drop_incomplete_batch=False)
    return [b for b in r]


@needs_arrow
def test_criteo_fast_path_identical(tmp_path, monkeypatch):
    src = need(CRITEO).read_bytes()
    # odd but valid values the numpy parser accepts; lines pyarrow must not "fix"
    extra = ("1\t-3\t007\t\t\t\t\t\t\t\t\t\t\t0" + "\tABCDEF12" + "\t" * 25 + "\r\n")
    p = tmp_path / "c.tsv"
    p.write_bytes(src[: src.rfind(b"\n", 0, 400_000) + 1] + extra.encode())
    for kw in (dict(slot_size_array=[1000] * 26), dict(i64_input_key=True)):
        a = _read_tsv(str(p), "numpy", monkeypatch, **kw)
        b = _read_tsv(str(p), "auto", monkeypatch, **kw)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert np.array_equal(x.labels.numpy(), y.labels.numpy())
            assert np.array_equal(x.dense.numpy(), y.dense.numpy())
            assert np.array_equal(x.sparse["data1"].keys.numpy(), y.sparse["data1"].keys.numpy())


@needs_arrow
@pytest.mark.parametrize("bad, where", [
    ("\t 5\t", "field I5"), ("\t0x5\t", "field I5"), ("\t5 \t", "field I5"),
    ("\t1234567890123456789\t", "field I5"), ("\t-\t", "field I5"), ("\t+5\t", "field I5"),
])
def test_criteo_fast_path_same_errors(tmp_path, monkeypatch, bad, where):
    good = "0\t1\t2\t\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13" + "\t68fd1e64" * 26 + "\n"
    p = tmp_path / "bad.tsv"
    p.write_text(good * 2 + good.replace("\t5\t", bad, 1) + good)
    msgs = []
    for parser in ("numpy", "auto"):
        with pytest.raises(DataError) as ei:
            _read_tsv(str(p), parser, monkeypatch)
        msgs.append(str(ei.value))
    assert msgs[0] == msgs[1] and "row 3" in msgs[0] and where in msgs[0]


@needs_arrow
def test_preprocess_fast_path_identical(tmp_path, monkeypatch):
    from terarec.data.preprocess import preprocess_csv

    rng = np.random.default_rng(0)
    rows = ["label,x,c1,c2"]
    for i in range(3000):
        c2 = f"long-value-{i % 7}" if i > 2000 else f"v{rng.integers(0, 30)}"
        rows.append(f"{i % 2},{rng.random():.4f},{rng.integers(0, 50)},{c2 if i % 11 else ''}")
    p = tmp_path / "d.csv"
    p.write_text("\n".join(rows) + "\n")
    outs = []
    for parser in ("numpy", "auto"):
        monkeypatch.setenv("TERAREC_TEXT_PARSER", parser)
        out = tmp_path / parser
        res = preprocess_csv(str(p), str(out), label="label", cats=["c1", "c2"], dense=["x"],
                             freq_threshold=3, block_bytes=8 << 10, num_workers=1,
                             progress=False, rows_per_file=1000)
        import pyarrow.parquet as pq

        tables = [pq.read_table(f).to_pydict() for f in res.train_files]
        outs.append(((out / "vocab.json").read_text(), tables))
    assert outs[0] == outs[1]


def test_fitstats_lazy_merge_is_exact():
    from terarec.data.preprocess.transform import FitStats

    rng = np.random.default_rng(1)
    blocks = []
    for i in range(40):
        v = rng.integers(0, 5000 if i % 2 else 50, 3000).astype(np.uint64)
        if i % 3 == 0:
            v = np.array([b"x%d" % x for x in v], dtype="S8")  # bytes blocks mixed in
        u, c = np.unique(v, return_counts=True)
        blocks.append(FitStats(3000, *(np.zeros(1),) * 5, [u], [c]))
    st = FitStats()
    for b in blocks:
        st = st.merge(b)
    st.compact()
    ref = {}
    for b in blocks:
        for v, c in zip(b.values[0], b.counts[0]):
            key = arrowtext.unpack_short(np.array([v]))[0] if b.values[0].dtype == np.uint64 \
                else v
            ref[key] = ref.get(key, 0) + int(c)
    got = st.values[0]
    got = arrowtext.unpack_short(got) if got.dtype == np.uint64 else got
    assert dict(zip(got.tolist(), st.counts[0].tolist())) == ref


def test_preprocess_worker_blocks_keep_line_numbers(tmp_path):
    """Workers read their own byte ranges: bad-row line numbers (header, several files, small
    blocks, 2 processes) are the same as with one process."""
    from terarec.data.preprocess import preprocess_csv

    files = []
    for f in range(2):
        rows = ["label,x,c"] + [f"{i % 2},{i},v{i % 13}" for i in range(400)]
        rows[150 + f] = "1,notanumber,v1"
        rows[300] = "1,2"
        p = tmp_path / f"in{f}.csv"
        p.write_text("\n".join(rows) + "\n")
        files.append(str(p))
    got = []
    for workers in (1, 2):
        res = preprocess_csv(files, str(tmp_path / f"o{workers}"), label="label", cats=["c"],
                             dense=["x"], on_error="skip", block_bytes=512,
                             num_workers=workers, progress=False)
        got.append((res.rows, res.bad_rows, res.bad_examples))
    assert got[0] == got[1]
    assert got[0][1] == 4 and [b[1] for b in got[0][2]] == [151, 301, 152, 301]
    with pytest.raises(DataError, match=r"in1\.csv.*row 152"):
        preprocess_csv(files[1:], str(tmp_path / "r"), label="label", cats=["c"], dense=["x"],
                       block_bytes=512, num_workers=2, progress=False)

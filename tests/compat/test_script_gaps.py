"""Gaps found by running HugeCTR's sample scripts (DIN, BST, MMoE, MLPerf DLRM) unchanged.

* Reshape with ``time_step`` after FusedReshapeConcat (DIN);
* zeros in ``slot_size_array`` (DIN / BST: slots that share the next slot's vocabulary);
* ``CreateSolver(warmup_steps=0, decay_steps=0)`` (MLPerf DLRM ``train.py`` defaults);
* remote paths (``s3://``, ``hdfs://``, ``gs://``, ``https://``) are a clear error, never a
  local folder named ``s3:``.

(``compile(loss_names=[label names])`` of the MMoE sample: tests/training/test_multitask.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import terarec as hugectr
from terarec.data.readers import READERS, ReaderConfig
from terarec.data.readers.chunk import NO_KEY_LIMIT, slot_key_limits
from terarec.data.readers.parquet import ParquetSource, _FilePlan
from terarec.data.schema import DataSchema, SparseSpec
from terarec.errors import ConfigError, DataError, NotSupportedError
from terarec.inference.model_files import write_sparse_model
from terarec.layers import build_layer
from terarec.utils.atomic import atomic_file
from terarec.utils.paths import check_local_path, url_scheme
from tests.helpers.models import build_dcn
from tests.helpers.synth import raw_async_dataset, write_raw_async

REMOTE = ["s3://bucket/ckpt/m", "hdfs://namenode:9000/user/x/m", "gs://bucket/m",
          "https://storage.googleapis.com/bucket/m"]


# ------------------------------------------------------------------ Reshape time_step (DIN)
def test_din_reshape_time_step_after_fused_reshape_concat():
    """DIN: FusedReshapeConcat's history top (B*10, 36) -> Reshape(36, time_step=10) -> (B, 10, 36)
    (HugeCTR counts every element: batch = N / (time_step * leading_dim))."""
    b, s, e = 4, 11, 18
    frc = build_layer("FusedReshapeConcat", {}, [(b, s, e), (b, s, e)])
    his_shape, item_shape = frc.output_shapes()
    assert (his_shape, item_shape) == ((b * 10, 36), (b, 36))
    rs = build_layer("Reshape", {"leading_dim": 36, "time_step": 10}, [his_shape])
    assert rs.output_shapes() == [(b, 10, 36)]
    mean = build_layer("ReduceMean", {"axis": 1}, rs.output_shapes())
    assert mean.output_shapes() == [(b, 1, 36)]
    for batch in (b, 7):  # the eval batch differs from the training batch
        good, cate = torch.randn(batch, s, e), torch.randn(batch, s, e)
        his, _item = frc(good, cate)
        out = rs(his)
        assert out.shape == (batch, 10, 36)
        torch.testing.assert_close(out[:, :, :e], good[:, :10])  # sample-major history rows
        torch.testing.assert_close(out[:, :, e:], cate[:, :10])
    # per-sample input keeps working; a size that does not divide is still a clear error
    assert build_layer("Reshape", {"leading_dim": 4, "time_step": 3},
                       [(4, 12)]).output_shapes() == [(4, 3, 4)]
    with pytest.raises(ConfigError, match="time_step"):
        build_layer("Reshape", {"leading_dim": 36, "time_step": 7}, [(40, 36)])


# ------------------------------------------------------------------ zeros in slot_size_array
def test_slot_key_limits():
    assert slot_key_limits([5, 0, 0, 3]).tolist() == [5, 3, 3, 3]
    assert slot_key_limits([5, 0]).tolist() == [5, NO_KEY_LIMIT]
    assert slot_key_limits([]).tolist() == []


def test_data_reader_params_accept_zero_slot_sizes():
    sizes = [192403] + [0] * 10 + [63001] + [0] * 10 + [801]  # HugeCTR's DIN sample
    p = hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Parquet,
                                 source=["./x/_file_list.txt"], eval_source="./y/_file_list.txt",
                                 check_type=hugectr.Check_t.Non, slot_size_array=sizes)
    assert p.slot_size_array == sizes
    assert ReaderConfig("Parquet", "x", slot_size_array=sizes).slot_size_array == sizes
    with pytest.raises(ConfigError, match="slot_size_array"):
        hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Parquet,
                                 source="x", slot_size_array=[3, -1])
    with pytest.raises(ConfigError, match="slot_size_array"):
        ReaderConfig("Parquet", "x", slot_size_array=[3, -1])


def _parquet(tmp_path: Path, keys: np.ndarray) -> str:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = keys.shape[0]
    cols = {"label": np.zeros(n, np.float32), "I1": np.ones(n, np.float32)}
    cols.update({f"C{s + 1}": keys[:, s] for s in range(keys.shape[1])})
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table(cols), path)
    return path


def _decode(path: str, sizes: list[int], general: bool, monkeypatch) -> np.ndarray:
    sch = DataSchema([1], ["label"], 1, "dense", [SparseSpec("a", [1, 1, 1], True, 3)])
    cfg = ReaderConfig("Parquet", path, slot_size_array=sizes, i64_input_key=True, num_workers=1)
    with monkeypatch.context() as m:
        if general:  # the general (list / null) conversion must agree with the fast one
            m.setattr(ParquetSource, "_plan_of", lambda self, schema: _FilePlan(False, False))
        (chunk,) = READERS.get("Parquet")(cfg, sch).decode(path, 0, 4)
    return chunk.keys[0].reshape(-1, 3)


@pytest.mark.parametrize("general", [False, True])
def test_parquet_zero_slot_sizes_offsets_and_range_checks(tmp_path, monkeypatch, general):
    keys = np.array([[0, 2, 1], [4, 0, 2], [1, 1, 0], [3, 2, 2]], dtype=np.int64)
    path = _parquet(tmp_path, keys)
    # slot 1 has size 0: no offset of its own, it shares slot 2's range (offset 5, size 3)
    got = _decode(path, [5, 0, 3], general, monkeypatch)
    np.testing.assert_array_equal(got, keys + np.array([0, 5, 5]))
    # a trailing 0: offset 8, no upper bound
    got = _decode(path, [5, 3, 0], general, monkeypatch)
    np.testing.assert_array_equal(got, keys + np.array([0, 5, 8]))
    # positive sizes still check their range; a 0-size slot is checked against the shared size
    with pytest.raises(DataError, match="beyond the slot size 2") as ei:
        _decode(path, [5, 0, 2], general, monkeypatch)
    assert "C2" in str(ei.value)  # slot 1 (size 0, shared range 2) holds key 2
    with pytest.raises(DataError, match="beyond the slot size 4") as ei:
        _decode(path, [4, 3, 3], general, monkeypatch)
    assert "C1" in str(ei.value)


def test_raw_async_zero_slot_sizes(tmp_path):
    n = 8
    keys = np.tile(np.array([[1, 2, 0]], dtype=np.int64), (n, 1))
    path = tmp_path / "d.bin"
    write_raw_async(path, np.zeros(n, np.int32), np.ones((n, 2), np.float32), keys)
    sch = DataSchema([1], ["label"], 2, "dense", [SparseSpec("a", [1, 1, 1], True, 3)])

    def decode(sizes):
        cfg = ReaderConfig("RawAsync", str(path), num_samples=n, slot_size_array=sizes,
                           num_workers=1)
        (chunk,) = READERS.get("RawAsync")(cfg, sch).decode(str(path), 0, n)
        return chunk.keys[0].reshape(n, 3)

    np.testing.assert_array_equal(decode([4, 0, 3])[0], [1, 6, 4])
    with pytest.raises(DataError, match="beyond the slot size 2"):
        decode([4, 0, 2])


# ------------------------------------------------------------------ warmup_steps / decay_steps 0
def test_solver_accepts_zero_warmup_and_decay_steps():
    s = hugectr.CreateSolver(lr=0.5, warmup_steps=0, decay_start=0, decay_steps=0)
    assert (s.warmup_steps, s.decay_steps) == (0, 0)
    for bad in ({"warmup_steps": -1}, {"decay_steps": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            hugectr.CreateSolver(**bad)


def test_model_trains_with_zero_warmup_and_decay_steps(small_data):
    model = build_dcn(small_data, lr=0.05, warmup_steps=0, decay_start=0, decay_steps=0)
    model.compile()
    model.fit(max_iter=3, display=1000, eval_interval=1000, snapshot=1000)
    assert model.get_learning_rate_scheduler().get_lr() == pytest.approx(0.05)


# ------------------------------------------------------------------ remote paths
def test_url_scheme_and_check_local_path():
    for url in REMOTE:
        assert url_scheme(url) == url.split(":")[0]
        with pytest.raises(NotSupportedError, match="remote file systems") as ei:
            check_local_path(url, "f(path=...)")
        assert url in str(ei.value) and "f(path=...)" in str(ei.value)
    assert url_scheme(Path("s3://bucket/k")) == "s3"  # pathlib collapsed the '//'
    for local in ("ckpt/m", "/abs/m", "./a:b/m", Path("x/y"), "", None):
        assert check_local_path(local, "f") == local


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("gaps"), n_train=256, n_eval=128)


@pytest.mark.parametrize("url", REMOTE)
def test_writes_to_remote_paths_raise_and_create_nothing(tmp_path, monkeypatch, url, small_data):
    d = small_data
    monkeypatch.chdir(tmp_path)
    model = build_dcn(d)
    model.compile()
    before = set(os.listdir(tmp_path))
    with pytest.raises(NotSupportedError, match="remote file systems") as ei:
        model.save_params_to_files(url)
    assert url in str(ei.value)
    with pytest.raises(NotSupportedError, match="snapshot_prefix"):
        model.fit(max_iter=2, display=1000, eval_interval=1000, snapshot=1, snapshot_prefix=url)
    with pytest.raises(NotSupportedError):
        model.graph_to_json(url + ".json")
    with pytest.raises(NotSupportedError):
        model.load_dense_weights(url + "_dense_0.model")
    with pytest.raises(NotSupportedError):
        model.load_sparse_weights([url + "0_sparse_0.model"])
    with pytest.raises(NotSupportedError):
        model.load_training_state(url, 0)
    with pytest.raises(NotSupportedError), atomic_file(Path(url)):
        pass
    model.fit(max_iter=1, display=1000, eval_interval=1000, snapshot=1000)
    model.eval()
    with pytest.raises(NotSupportedError, match="export_predictions"):
        model.export_predictions(url + ".pred", url + ".label")
    with pytest.raises(NotSupportedError, match="sparse_models"):
        hugectr.CreateETC([hugectr.TrainPSType_t.Staged], sparse_models=[url])
    with pytest.raises(NotSupportedError, match="local_paths"):
        hugectr.CreateETC([hugectr.TrainPSType_t.Cached], sparse_models=["m0"],
                          local_paths=[url], hmem_cache_configs=[hugectr.CreateHMemCache(
                              1, 0.5, 0)])
    with pytest.raises(NotSupportedError, match="write_sparse_model"):
        write_sparse_model(url, np.zeros(1, np.int64), np.zeros((1, 4), np.float32))
    assert set(os.listdir(tmp_path)) == before  # no local "s3:" / "https:" folder


def test_remote_reader_sources_raise(tmp_path):
    with pytest.raises(NotSupportedError, match="s3://bucket/train/_file_list.txt"):
        hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Parquet,
                                 source=["s3://bucket/train/_file_list.txt"], eval_source="x")
    with pytest.raises(NotSupportedError, match="eval_source"):
        hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Parquet,
                                 source=["x"], eval_source="hdfs://nn:9000/valid/list.txt")
    sch = DataSchema([1], ["label"], 1, "dense", [SparseSpec("a", [1], True, 1)])
    with pytest.raises(NotSupportedError, match="gs://bucket/d.parquet"):
        READERS.get("Parquet")(ReaderConfig("Parquet", "gs://bucket/d.parquet"), sch)
    listing = tmp_path / "_file_list.txt"  # a local file list naming remote files
    listing.write_text("1\nhttps://storage.googleapis.com/bucket/d.parquet\n")
    with pytest.raises(NotSupportedError, match="storage.googleapis.com"):
        READERS.get("Parquet")(ReaderConfig("Parquet", str(listing)), sch)


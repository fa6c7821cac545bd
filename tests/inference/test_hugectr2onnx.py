"""``terarec.hugectr2onnx``: HugeCTR's converter; onnxruntime predictions equal Model.predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from terarec import hugectr2onnx
from terarec.errors import ConfigError, NotSupportedError
from tests.helpers.models import BUILDERS
from tests.helpers.synth import raw_async_dataset

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny WDL (two embeddings on one sparse input) trained, saved and its graph written."""
    tmp = tmp_path_factory.mktemp("h2o")
    data = raw_async_dataset(tmp, n_train=512, n_eval=256)
    model = BUILDERS["wdl"](data)
    model.compile()
    model.fit(max_iter=5, display=100, eval_interval=100, snapshot=100)
    model.save_params_to_files(str(tmp / "m"), 5)
    model.graph_to_json(str(tmp / "g.json"))
    batch = next(model.eval_reader.iterate_once()).to("cpu")
    n_tables = len(model.engine.tables)
    return {"tmp": tmp, "graph": str(tmp / "g.json"), "dense": str(tmp / "m_dense_5.model"),
            "sparse": [str(tmp / f"m{i}_sparse_5.model") for i in range(n_tables)],
            "batch": batch, "expected": model.predict(batch), "model": model}


def _padded_keys(sparse) -> np.ndarray:  # noqa: ANN001
    """CSR keys -> (B, slots, nnz) int64 padded with -1."""
    lengths = sparse.lengths.numpy()
    nnz = max(int(lengths.max()), 1)
    out = np.full((lengths.size, nnz), -1, np.int64)
    keys, offs = sparse.keys.numpy(), sparse.offsets.numpy()
    for r, n in enumerate(lengths):
        out[r, :n] = keys[offs[r]:offs[r] + n]
    return out.reshape(-1, sparse.slot_num, nnz)


def _run(path, feeds):  # noqa: ANN001, ANN202
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_convert_embedding_matches_predict(saved):
    path = saved["tmp"] / "full.onnx"
    names = hugectr2onnx.converter.convert(str(path), saved["graph"], saved["dense"],
                                           convert_embedding=True,
                                           sparse_models=saved["sparse"], graph_name="wdl")
    assert names == ["dense", "data1"]
    assert onnx.load(str(path)).graph.name == "wdl"
    batch = saved["batch"]
    feeds = {"dense": batch.dense.numpy().astype(np.float32),
             "data1": _padded_keys(batch.sparse["data1"])}
    got = _run(path, feeds)
    np.testing.assert_allclose(got.reshape(saved["expected"].shape), saved["expected"],
                               rtol=1e-5, atol=1e-5)


def test_padding_and_unknown_keys_match_dense_export(saved):
    """Absent (-1) keys are skipped and unknown keys look up zero vectors: the whole model
    equals the dense-only export fed the pooled vectors computed here."""
    full, dense_only = saved["tmp"] / "full2.onnx", saved["tmp"] / "dense2.onnx"
    hugectr2onnx.converter.convert(str(full), saved["graph"], saved["dense"], True,
                                   saved["sparse"])
    names = hugectr2onnx.converter.convert(str(dense_only), saved["graph"], saved["dense"])
    from terarec.inference.model_files import read_sparse_model

    tables = [dict(zip(*(np.asarray(a) for a in read_sparse_model(f)))) for f in saved["sparse"]]
    rng = np.random.default_rng(1)
    b, s = 5, 3
    keys = rng.choice([*list(tables[0])[:20], 10**9], size=(b, s, 3)).astype(np.int64)
    keys[:, :, 2] = -1
    keys[0, 0, :] = -1  # an empty slot
    dense = rng.normal(size=(b, 4)).astype(np.float32)
    feeds = {"dense": dense}
    for name, table in zip(names[1:], tables):
        dim = next(iter(table.values())).shape[0]
        pooled = np.zeros((b, s, dim), np.float32)
        for idx in np.ndindex(b, s, 3):
            if keys[idx] != -1:
                pooled[idx[:2]] += table.get(int(keys[idx]), np.zeros(dim, np.float32))
        feeds[name] = pooled
    want = _run(dense_only, feeds)
    got = _run(full, {"dense": dense, "data1": keys})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _pool(keys: np.ndarray, folder: str) -> np.ndarray:
    """Sum-pool (B, S, N) keys (-1 = absent, unknown = zero vector) over a sparse folder."""
    from terarec.inference.model_files import read_sparse_model

    k, v = (np.asarray(a) for a in read_sparse_model(folder))
    table = dict(zip(k.tolist(), v))
    zero = np.zeros(v.shape[1], np.float32)
    pooled = np.zeros((*keys.shape[:2], v.shape[1]), np.float32)
    for idx in np.ndindex(*keys.shape):
        if keys[idx] != -1:
            pooled[idx[:2]] += table.get(int(keys[idx]), zero)
    return pooled


def test_dense_only_matches_predict(saved):
    path = saved["tmp"] / "dense.onnx"
    names = hugectr2onnx.converter.convert(str(path), saved["graph"], saved["dense"],
                                           ntp_file=None)
    assert names == ["dense", "wide_emb", "deep_emb"]
    batch = saved["batch"]
    keys = _padded_keys(batch.sparse["data1"])
    feeds = {"dense": batch.dense.numpy()}
    for name, folder in zip(names[1:], saved["sparse"]):
        feeds[name] = _pool(keys, folder)
    got = _run(path, feeds)
    np.testing.assert_allclose(got.reshape(saved["expected"].shape), saved["expected"],
                               rtol=1e-5, atol=1e-5)


def test_cli(saved):
    path = saved["tmp"] / "cli.onnx"
    subprocess.run([sys.executable, "-m", "terarec.hugectr2onnx.converter",
                    "--onnx_model_path", str(path), "--graph_config", saved["graph"],
                    "--dense_model", saved["dense"], "--convert_embedding",
                    "--sparse_models", *saved["sparse"], "--graph_name", "cli"],
                   check=True, capture_output=True, timeout=120)
    batch = saved["batch"]
    got = _run(path, {"dense": batch.dense.numpy(),
                      "data1": _padded_keys(batch.sparse["data1"])})
    np.testing.assert_allclose(got.reshape(saved["expected"].shape), saved["expected"],
                               rtol=1e-5, atol=1e-5)
    assert onnx.load(str(path)).graph.name == "cli"


def test_sparse_models_count_mismatch(saved):
    with pytest.raises(ConfigError, match="2 sparse model folder"):
        hugectr2onnx.converter.convert(str(saved["tmp"] / "x.onnx"), saved["graph"],
                                       saved["dense"], True, saved["sparse"][:1])


@pytest.mark.parametrize("layer", ["ReLUHalf", "GRU", "Select"])
def test_unsupported_layer(saved, layer):
    graph = json.loads(Path(saved["graph"]).read_text())
    graph["layers"].append({"type": layer, "bottom": "fc3", "top": "extra"})
    path = saved["tmp"] / f"bad_{layer}.json"
    path.write_text(json.dumps(graph))
    with pytest.raises(NotSupportedError, match=layer):
        hugectr2onnx.converter.convert(str(saved["tmp"] / "y.onnx"), str(path), saved["dense"])


def test_mean_combiner_and_ntp_file(tmp_path):
    """DCN with ``combiner="mean"``; ``ntp_file`` given explicitly for the dense-only export."""
    data = raw_async_dataset(tmp_path, n_train=256, n_eval=128, nnz=2)
    model = BUILDERS["dcn"](data, combiner="mean")
    model.compile()
    model.fit(max_iter=3, display=100, eval_interval=100, snapshot=100)
    model.save_params_to_files(str(tmp_path / "m"), 3)
    model.graph_to_json(str(tmp_path / "g.json"))
    batch = next(model.eval_reader.iterate_once()).to("cpu")
    expected = model.predict(batch)
    dense, sparse = str(tmp_path / "m_dense_3.model"), [str(tmp_path / "m0_sparse_3.model")]
    full = tmp_path / "full.onnx"
    hugectr2onnx.converter.convert(str(full), str(tmp_path / "g.json"), dense, True, sparse)
    keys = _padded_keys(batch.sparse["data1"])
    got = _run(full, {"dense": batch.dense.numpy(), "data1": keys})
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)
    ntp = tmp_path / "empty.ntp.json"
    ntp.write_text(json.dumps({"layers": []}))
    dense_only = tmp_path / "dense.onnx"
    hugectr2onnx.converter.convert(str(dense_only), str(tmp_path / "g.json"), dense,
                                   ntp_file=str(ntp))
    pooled = _pool(keys, sparse[0]) / (keys != -1).sum(axis=2, keepdims=True).clip(min=1)
    got = _run(dense_only, {"dense": batch.dense.numpy(), "emb": pooled.astype(np.float32)})
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)

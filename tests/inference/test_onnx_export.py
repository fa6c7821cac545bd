"""ONNX export of the dense network: onnxruntime predictions equal terarec's (1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from terarec.graph.inference import build_inference_network
from terarec.inference.onnx_export import export_onnx
from tests.helpers.models import BUILDERS
from tests.helpers.synth import raw_async_dataset

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("onnx"), n_train=512, n_eval=256)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_onnx_matches_dense_network(name, data, tmp_path):
    model = BUILDERS[name](data)
    model.compile()
    model.fit(max_iter=5, display=100, eval_interval=100, snapshot=100)
    model.save_params_to_files(str(tmp_path / "m"), 5)
    model.graph_to_json(str(tmp_path / "g.json"))
    onnx_path = tmp_path / "dense.onnx"
    names = export_onnx(tmp_path / "g.json", tmp_path / "m_dense_5.model", onnx_path)
    dense_fn, network = build_inference_network(tmp_path / "g.json", tmp_path / "m_dense_5.model")
    rng = np.random.default_rng(0)
    feeds = {names[0]: rng.normal(size=(7, data["dense_dim"])).astype(np.float32)}
    for n in names[1:]:
        feeds[n] = rng.normal(size=(7, *network.shapes[n][1:])).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    want = dense_fn({n: torch.from_numpy(feeds[n]) for n in names[1:]},
                    torch.from_numpy(feeds[names[0]])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

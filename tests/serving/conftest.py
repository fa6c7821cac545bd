"""A model repository with a tiny hand-written dense network, served on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from terarec.inference import embedding_specs_from_graph, write_sparse_model

# The 'serve' extra (starlette, uvicorn) is checked by each test module (importorskip there: a
# skip raised while pytest loads this conftest, e.g. `pytest tests/serving/x.py`, aborts the run).

GRAPH = {"layers": [
    {"name": "data", "type": "Data", "label": {"top": "label", "label_dim": 1},
     "dense": {"top": "dense", "dense_dim": 2},
     "sparse": [{"top": "data1", "slot_num": 3}]},
    {"name": "e", "type": "DistributedSlotSparseEmbeddingHash", "bottom": "data1",
     "top": "emb", "sparse_embedding_hparam": {"embedding_vec_size": 4, "combiner": "sum"}},
]}


def scale_of(version: int) -> float:
    return float(version)


def write_version(root: Path, version: int, model: str = "tiny") -> Path:
    folder = root / model / str(version)
    rng = np.random.default_rng(0)
    keys = np.arange(100, dtype=np.int64)
    write_sparse_model(folder / "0_sparse_0.model", keys,
                       rng.standard_normal((100, 4)).astype(np.float32))
    (folder / "graph.json").write_text(json.dumps(GRAPH))
    (folder / "_dense_0.model").write_bytes(np.float32(scale_of(version)).tobytes())
    (folder / "config.json").write_text(json.dumps({
        "graph": "graph.json", "dense": "_dense_0.model", "sparse": ["0_sparse_0.model"],
        "max_batch_size": 2048, "params": {"gpucacheper": 0.5, "hit_rate_threshold": 0.8}}))
    return folder


def tiny_network(params):
    """dense_fn = sigmoid(scale * (sum of pooled embeddings + sum of dense)); scale from file."""
    scale = float(np.fromfile(params.dense_model_file, np.float32)[0])

    def dense_fn(emb: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scale * (emb["emb"].sum((1, 2)) + dense.sum(1))).unsqueeze(1)

    return dense_fn, embedding_specs_from_graph(params.network_file)


@pytest.fixture
def new_version():
    """``new_version(root, version)`` writes a version folder (scale = version)."""
    return write_version


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_version(tmp_path, 1)
    return tmp_path


@pytest.fixture
def server(repo: Path) -> Iterator[object]:
    from terarec.serving.repository import make_loader
    from terarec.serving.server import ServerThread

    srv = ServerThread(repo, port=0, loader=make_loader(tiny_network), max_delay_s=0.002,
                       max_request_bytes=1 << 20)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()

"""CSR request -> pooled embeddings -> dense_fn, through the HugeCTR-named session classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from terarec.errors import ConfigError
from terarec.inference import (
    CreateEmbeddingCache,
    CreateInferenceSession,
    CreateParameterServer,
    InferenceParams,
    InferenceSession,
    embedding_specs_from_graph,
    merge,
    parse_csr,
    read_inference_config,
    to_csr,
    write_sparse_model,
)

LAYERS = [
    {"name": "data", "type": "Data", "label": {"top": "label", "label_dim": 1},
     "dense": {"top": "dense", "dense_dim": 3},
     "sparse": [{"top": "wide", "type": "DistributedSlot", "max_feature_num_per_sample": 4,
                 "slot_num": 2}, {"top": "deep", "type": "DistributedSlot", "slot_num": 3}]},
    {"name": "e1", "type": "DistributedSlotSparseEmbeddingHash", "bottom": "wide",
     "top": "emb_wide", "sparse_embedding_hparam": {"embedding_vec_size": 1, "combiner": "sum",
                                                    "workspace_size_per_gpu_in_mb": 1}},
    {"name": "e2", "type": "DistributedSlotSparseEmbeddingHash", "bottom": "deep",
     "top": "emb_deep", "sparse_embedding_hparam": {"embedding_vec_size": 4,
                                                    "combiner": "mean"}},
]


def dense_fn(emb: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
    """A tiny hand-written network: sigmoid(sum of everything)."""
    z = emb["emb_wide"].sum((1, 2)) + emb["emb_deep"].sum((1, 2)) + dense.sum(1)
    return torch.sigmoid(z).unsqueeze(1)


def oracle(tables, keys_per_table, dense, b) -> np.ndarray:
    """Pooled embeddings and predictions computed with Python loops."""
    z = dense.reshape(b, 3).sum(1).astype(np.float64)
    for (lookup, slots, combiner), rows in zip(tables, keys_per_table):
        for r, ks in enumerate(rows):
            vec = sum((lookup[k] for k in ks), np.zeros_like(next(iter(lookup.values()))))
            if combiner == "mean" and ks:
                vec = vec / len(ks)
            z[r // slots] += vec.sum()
    return 1 / (1 + np.exp(-z))


@pytest.fixture
def model(tmp_path: Path):
    rng = np.random.default_rng(3)
    wide_k, deep_k = np.arange(0, 40, dtype=np.int64), np.arange(1000, 1060, dtype=np.int64)
    wide_v = rng.standard_normal((40, 1)).astype(np.float32)
    deep_v = rng.standard_normal((60, 4)).astype(np.float32)
    f0 = write_sparse_model(tmp_path / "m0_sparse_1.model", wide_k, wide_v)
    f1 = write_sparse_model(tmp_path / "m1_sparse_1.model", deep_k, deep_v)
    cfg = tmp_path / "m_infer.json"
    cfg.write_text(json.dumps({"inference": {"max_batchsize": 16, "hit_rate_threshold": 0.6,
                                             "dense_model_file": "x.model",
                                             "sparse_model_file": [str(f0), str(f1)]},
                               "layers": LAYERS}))
    lookups = [(dict(zip(wide_k.tolist(), wide_v)), 2, "sum"),
               (dict(zip(deep_k.tolist(), deep_v)), 3, "mean")]
    return cfg, lookups, (f0, f1)


def request(b: int, rng: np.random.Generator):
    dense = rng.standard_normal(b * 3).astype(np.float32)
    rows_w = [rng.integers(0, 45, rng.integers(0, 4)).tolist() for _ in range(b * 2)]
    rows_d = [rng.integers(1000, 1065, rng.integers(1, 4)).tolist() for _ in range(b * 3)]
    keys = [k for r in rows_w + rows_d for k in r]
    rp = np.concatenate([np.cumsum([0] + [len(r) for r in rows_w]),
                         np.cumsum([0] + [len(r) for r in rows_d])])
    return dense, np.array(keys, np.int64), rp.astype(np.int32), (rows_w, rows_d)


def test_v30_session_matches_oracle(model) -> None:
    cfg, lookups, _ = model
    assert read_inference_config(cfg)["sparse_model_files"][1].endswith("m1_sparse_1.model")
    ps = CreateParameterServer([str(cfg)], ["m"], True)
    cache = CreateEmbeddingCache(ps, 0, True, 0.5, str(cfg), "m", True)
    sess = InferenceSession(str(cfg), 0, cache, dense_network=(
        dense_fn, embedding_specs_from_graph(str(cfg))))
    rng = np.random.default_rng(0)
    for b in (1, 5, 16):
        dense, keys, rp, rows = request(b, rng)
        out = sess.predict(dense.tolist(), keys.tolist(), rp.tolist())
        # unknown keys (>= 40, >= 1060) get the default value 0.0
        lk = [({**t[0], **{k: t[0][next(iter(t[0]))] * 0 for k in range(2000)
                           if k not in t[0]}}, t[1], t[2]) for t in lookups]
        np.testing.assert_allclose(out, oracle(lk, rows, dense, b), rtol=1e-5)
    assert cache.stats()


def test_params_session_and_pooling(model) -> None:
    cfg, _, folders = model
    graph = cfg.with_name("graph.json")
    graph.write_text(json.dumps({"layers": LAYERS}))
    params = InferenceParams("m", 8, 0.9, "", [str(f) for f in folders], 0, False, 0.0, True,
                             default_value_for_each_table=[0.0, 0.0])
    sess = CreateInferenceSession(str(graph), params, dense_network=(
        dense_fn, embedding_specs_from_graph(graph)))
    # two samples; wide: [0,1],[ ], [2],[39]  deep: [1000],[1001,1002],[ ],[1003]...
    keys = [0, 1, 2, 39, 1000, 1001, 1002, 1003, 1004, 1005]
    rp = [0, 2, 2, 3, 4, 0, 1, 3, 3, 4, 5, 6]
    batch = sess.core.parse(np.zeros(6), keys, rp)
    pooled = {k: v.cpu() for k, v in sess.core.pool(batch).items()}  # on the session's device
    assert pooled["emb_wide"].shape == (2, 2, 1) and pooled["emb_deep"].shape == (2, 3, 4)
    ps = sess.parameter_server
    w = ps.lookup(np.array([0, 1, 2, 39]), "m", 0)
    d = ps.lookup(np.arange(1000, 1006), "m", 1)
    torch.testing.assert_close(pooled["emb_wide"][0, 0], torch.from_numpy(w[0] + w[1]))
    torch.testing.assert_close(pooled["emb_wide"][0, 1], torch.zeros(1))
    torch.testing.assert_close(pooled["emb_deep"][0, 1], torch.from_numpy((d[1] + d[2]) / 2))
    torch.testing.assert_close(pooled["emb_deep"][0, 2], torch.zeros(4))
    # absolute row_ptrs for the second table are accepted too
    rp_abs = [0, 2, 2, 3, 4, 4, 5, 7, 7, 8, 9, 10]
    b2 = sess.core.parse(np.zeros(6), keys, rp_abs)
    torch.testing.assert_close(sess.core.pool(b2)["emb_deep"].cpu(), pooled["emb_deep"])
    with pytest.raises(TypeError):
        sess.predict(1, "file_list.txt")  # the reader overload needs the reader type too
    with pytest.raises(ConfigError, match="max_batchsize"):
        sess.core.run(merge([batch] * 5))


def test_csr_errors_and_merge() -> None:
    with pytest.raises(ConfigError, match="row_ptrs"):
        parse_csr(np.zeros(3), [1], [0, 1, 1], [2, 3], 3)
    with pytest.raises(ConfigError, match="dense_feature"):
        parse_csr(np.zeros(2), [], [0, 0, 0, 0, 0, 0, 0], [2, 3], 3)
    with pytest.raises(ConfigError, match="embeddingcolumns"):
        parse_csr(np.zeros(3), [1, 2], [0, 1, 1, 0, 0, 0, 0], [2, 3], 3)
    with pytest.raises(ConfigError, match="non-decreasing"):
        parse_csr(np.zeros(3), [1, 2], [0, 2, 1, 0, 0, 0, 0], [2, 3], 3)
    with pytest.raises(ConfigError):
        parse_csr(np.zeros(3), [1.5], [0, 1, 1, 0, 0, 0, 0], [2, 3], 3)
    rng = np.random.default_rng(1)
    parts = [request(b, rng) for b in (1, 3, 2)]
    batches = [parse_csr(d, k, r, [2, 3], 3) for d, k, r, _ in parts]
    m = merge(batches)
    assert m.batch_size == 6
    d, k, r = to_csr(m)
    again = parse_csr(d, k, r, [2, 3], 3)
    np.testing.assert_array_equal(again.tables[1][1], m.tables[1][1])
    nw = [int(p[2][2 * b]) for p, b in zip(parts, (1, 3, 2))]  # wide keys of each request
    np.testing.assert_array_equal(k, np.concatenate([p[1][:n] for p, n in zip(parts, nw)] +
                                                    [p[1][n:] for p, n in zip(parts, nw)]))


def test_build_dense_network_missing_dense_file(model) -> None:
    from terarec.errors import DataError
    from terarec.inference import build_dense_network

    cfg, _, _ = model
    with pytest.raises(DataError, match="x.model"):
        build_dense_network(str(cfg), "x.model", "cpu")

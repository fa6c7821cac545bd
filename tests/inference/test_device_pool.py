"""The session's device fast path agrees with its plain-PyTorch reference twin.

Predictions, pooled embeddings, cache statistics and cache contents are compared between a
session on the fast path and one on the reference path fed the same requests; the warm path is
checked to take one host sync and no parameter-server call. CUDA variants are marked ``gpu``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from terarec.errors import ConfigError
from terarec.inference import CreateInferenceSession, InferenceParams, parse_csr, write_sparse_model
from terarec.inference.dense_network import embedding_specs_from_graph
from terarec.inference.dense_runner import DenseRunner
from terarec.inference.device_csr import device_csr_from_batch, to_device_csr
from tests.inference.test_session import LAYERS, dense_fn, request

CUDA = torch.cuda.is_available()


def _model(tmp_path: Path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(3)
    f0 = write_sparse_model(tmp_path / "m0_sparse_1.model", np.arange(0, 40, dtype=np.int64),
                            rng.standard_normal((40, 1)).astype(np.float32))
    f1 = write_sparse_model(tmp_path / "m1_sparse_1.model", np.arange(1000, 1060, dtype=np.int64),
                            rng.standard_normal((60, 4)).astype(np.float32))
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps({"layers": LAYERS}))
    return graph, [str(f0), str(f1)]


def _session(graph: Path, files: list[str], device_id: int = 0, pct: float = 0.5,
             threshold: float = 1.01, fast: bool = True, mixed: bool = False):
    params = InferenceParams("m", 64, threshold, "", files, device_id, True, pct, True,
                             default_value_for_each_table=[0.0, 0.5], use_mixed_precision=mixed)
    sess = CreateInferenceSession(str(graph), params, dense_network=(
        dense_fn, embedding_specs_from_graph(graph)))
    sess.core.fast_path = fast
    return sess


def _request(b: int, rng: np.random.Generator, known_only: bool):
    """Like test_session.request; ``known_only`` draws keys every table holds (warm batches)."""
    if not known_only:
        return request(b, rng)[:3]
    dense = rng.standard_normal(b * 3).astype(np.float32)
    rows_w = [rng.integers(0, 12, rng.integers(0, 4)).tolist() for _ in range(b * 2)]
    rows_d = [rng.integers(1000, 1015, rng.integers(1, 4)).tolist() for _ in range(b * 3)]
    keys = [k for r in rows_w + rows_d for k in r]
    rp = np.concatenate([np.cumsum([0] + [len(r) for r in rows_w]),
                         np.cumsum([0] + [len(r) for r in rows_d])])
    return dense, np.array(keys, np.int64), rp.astype(np.int32)


def _caches(sess) -> list:
    return [sess.embedding_cache.cache(t) for t in range(2)]


def _state(sess) -> list[tuple]:
    out = []
    for c in _caches(sess):
        c.wait_pending()
        keys, vecs = c.dump()
        order = np.argsort(keys)
        st = c.stats()
        out.append((st["queries"], st["hits"], st["last_hit_rate"], st["sync_inserts"],
                    st["async_inserts"], st["size"], keys[order].tolist(),
                    vecs[order].round(6).tolist(),
                    # the LRU/LFU state, slot by slot (both sessions insert in the same order)
                    c._tick, c._keys.tolist(), c._last.tolist(), c._freq.tolist()))
    return out


@pytest.mark.parametrize(("threshold", "pct"), [(1.01, 0.5), (0.3, 0.5), (0.3, 1.0)])
def test_fast_path_equals_reference(tmp_path: Path, threshold: float, pct: float) -> None:
    graph, files = _model(tmp_path)
    fast = _session(graph, files, threshold=threshold, pct=pct)
    ref = _session(graph, files, threshold=threshold, pct=pct, fast=False)
    rng = np.random.default_rng(7)
    commits = 0
    for i, b in enumerate((1, 5, 16, 16, 9, 16, 16, 4, 16, 16)):
        dense, keys, rp = _request(b, rng, known_only=i % 3 != 0)
        got = fast.predict(dense, keys, rp)
        commits += fast.core.pooler.syncs == 1
        want = ref.predict(dense, keys, rp)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        batch = parse_csr(dense, keys, rp, [2, 3], 3)
        if threshold > 1:  # pooled equality on a synchronous-insert cache
            pf, pr = fast.core.pool(batch), ref.core.pool(batch)
            for name in pr:
                torch.testing.assert_close(pf[name], pr[name], rtol=1e-6, atol=1e-7)
        for c in _caches(fast) + _caches(ref):
            c.wait_pending()
    assert _state(fast) == _state(ref)
    assert any(c.stats()["hits"] > 0 for c in _caches(fast))
    assert commits > 0  # the all-hit (commit) path ran


def test_warm_batch_is_one_sync_and_no_hps_call(tmp_path: Path, monkeypatch) -> None:
    graph, files = _model(tmp_path)
    sess = _session(graph, files, pct=1.0)
    rng = np.random.default_rng(0)
    dense, _, _, _ = request(4, rng)
    keys = np.array([0, 1, 2, 3, 3, 5, 6, 7] + [1000 + i for i in range(12)] + [1001],
                    np.int64)
    rp = np.concatenate([np.arange(9), np.concatenate([np.arange(12), [13]])])
    first = sess.predict(dense, keys, rp)
    caches = _caches(sess)
    before = [c.stats() for c in caches]
    for c in caches:
        monkeypatch.setattr(c, "query", lambda *_a, **_k: pytest.fail("HPS path on a warm batch"))
    again = sess.predict(dense, keys, rp)
    assert sess.core.pooler.syncs == 1
    np.testing.assert_allclose(again, first, rtol=1e-6)
    after = [c.stats() for c in caches]
    # unique keys are counted, as the reference counts them: 7 and 12
    assert [a["queries"] - b["queries"] for a, b in zip(after, before)] == [7, 12]
    assert [a["hits"] - b["hits"] for a, b in zip(after, before)] == [7, 12]


def test_device_csr_matches_parse_csr() -> None:
    rng = np.random.default_rng(2)
    for b in (1, 4):
        dense, keys, rp, _ = request(b, rng)
        ref = parse_csr(dense, keys, rp, [2, 3], 3)
        for k, r in ((keys, rp), (keys.tolist(), rp.tolist()), (torch.from_numpy(keys),
                                                                torch.from_numpy(rp)),
                     (keys.astype(np.int32), rp.astype(np.int64))):
            d = to_device_csr(dense, k, r, [2, 3], 3, torch.device("cpu"))
            via_batch = device_csr_from_batch(ref, torch.device("cpu"))
            assert bool(d.valid.all()) and d.batch_size == b
            for t, (tk, toff) in enumerate(ref.tables):
                np.testing.assert_array_equal(d.table_keys(t).numpy(), tk)
                np.testing.assert_array_equal(d.offsets[t].numpy(), toff)
                np.testing.assert_array_equal(via_batch.offsets[t].numpy(), toff)
    # absolute offsets of the second table, and 32-bit keys (i64_input_key=False)
    keys = [0, 1, 2, 39, 1000, 1001, 1002, 1003, 1004, 2**32 + 1005]
    d = to_device_csr(np.zeros(6), keys, [0, 2, 2, 3, 4, 4, 5, 7, 7, 8, 9, 10], [2, 3], 3,
                      torch.device("cpu"), i64_input_key=False)
    assert d.offsets[1].tolist() == [0, 1, 3, 3, 4, 5, 6] and d.table_keys(1)[-1] == 1005


def test_device_csr_errors_match_parse_csr(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    cases = [(np.zeros(3), [1], [0, 1, 1], "row_ptrs"),
             (np.zeros(2), [], [0] * 7, "dense_feature"),
             (np.zeros(3), [1, 2], [0, 1, 1, 0, 0, 0, 0], "embeddingcolumns"),
             (np.zeros(3), [1.5], [0, 1, 1, 0, 0, 0, 0], "integer")]
    for dense, keys, rp, match in cases:
        with pytest.raises(ConfigError, match=match):
            to_device_csr(dense, keys, rp, [2, 3], 3, cpu)
    # a decreasing offset inside a table is found on the device and raised after the sync
    graph, files = _model(tmp_path)
    sess = _session(graph, files)
    with pytest.raises(ConfigError, match="non-decreasing"):
        sess.predict(np.zeros(3), [1], [0, 2, 1, 0, 0, 0, 0])
    with pytest.raises(ConfigError, match="non-decreasing"):
        sess.predict(torch.zeros(3), torch.tensor([1]), torch.tensor([0, 2, 1, 0, 0, 0, 0]))


def test_tensor_request_returns_tensor(tmp_path: Path) -> None:
    graph, files = _model(tmp_path)
    sess = _session(graph, files)
    dense, keys, rp, _ = request(6, np.random.default_rng(4))
    out = sess.predict(torch.from_numpy(dense), torch.from_numpy(keys), torch.from_numpy(rp))
    assert isinstance(out, torch.Tensor) and out.shape == (6,)
    np.testing.assert_allclose(out.cpu().numpy(), sess.predict(dense, keys, rp), rtol=1e-6)


def test_mixed_precision_runner_close_to_fp32() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 1)

    def fn(emb: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(lin(emb["e"].sum(1) + dense))

    pooled, dense = {"e": torch.randn(32, 3, 8)}, torch.randn(32, 8)
    fp32 = DenseRunner(fn, torch.device("cpu"))(pooled, dense)
    bf16 = DenseRunner(fn, torch.device("cpu"), "bf16")(pooled, dense)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=2e-2, rtol=0)
    with pytest.raises(ConfigError, match="mixed precision"):
        DenseRunner(fn, torch.device("cpu"), "fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_fast_path_equals_reference(tmp_path: Path) -> None:
    graph, files = _model(tmp_path)
    fast = _session(graph, files)
    ref = _session(graph, files, fast=False)
    assert fast.core.device.type == "cuda"
    rng = np.random.default_rng(11)
    for b in (3, 16, 16, 16):
        dense, keys, rp, _ = request(b, rng)
        want = ref.predict(dense, keys, rp)
        np.testing.assert_allclose(fast.predict(dense, keys, rp), want, rtol=1e-5, atol=1e-6)
        on_dev = fast.predict(torch.from_numpy(dense).cuda(), torch.from_numpy(keys).cuda(),
                              torch.from_numpy(rp).cuda())
        assert on_dev.is_cuda
        np.testing.assert_allclose(on_dev.cpu().numpy(), want, rtol=1e-5, atol=1e-6)
    assert _state(fast)[0][:2] != (0, 0)
    # a warm request (every key cached by the call before) is one host sync
    dense = np.zeros(3, np.float32)
    keys = np.array([0, 1, 1000, 1001, 1002], np.int64)
    fast.predict(dense, keys, [0, 1, 2, 0, 1, 2, 3])
    fast.predict(dense, keys, [0, 1, 2, 0, 1, 2, 3])
    assert fast.core.pooler.syncs == 1


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_mixed_precision_session(tmp_path: Path) -> None:
    graph, files = _model(tmp_path)
    fp32 = _session(graph, files)
    mixed = _session(graph, files, mixed=True)
    assert mixed.core.dense.mixed_precision == "bf16"
    dense, keys, rp, _ = request(16, np.random.default_rng(5))
    np.testing.assert_allclose(mixed.predict(dense, keys, rp), fp32.predict(dense, keys, rp),
                               atol=2e-2)

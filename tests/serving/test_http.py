"""The KServe v2 server driven by tritonclient.http: good, malformed and concurrent requests,
and a new version loaded while requests are in flight."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the 'serve' extra is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")
httpclient = pytest.importorskip("tritonclient.http")
httpx = pytest.importorskip("httpx")


def make_request(b: int, rng: np.random.Generator, key_dtype=np.int64):
    dense = rng.standard_normal(b * 2).astype(np.float32)
    lengths = rng.integers(0, 3, b * 3)
    keys = rng.integers(0, 120, int(lengths.sum())).astype(key_dtype)
    rowidx = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return dense, keys, rowidx


def infer(client, dense, keys, rowidx, binary=True, model="tiny"):
    kdt = "INT64" if keys.dtype == np.int64 else "INT32"
    inputs = [httpclient.InferInput("DES", list(dense.shape), "FP32"),
              httpclient.InferInput("CATCOLUMN", list(keys.shape), kdt),
              httpclient.InferInput("ROWINDEX", list(rowidx.shape), "INT32")]
    for i, arr in zip(inputs, (dense, keys, rowidx)):
        i.set_data_from_numpy(arr, binary_data=binary)
    out = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    return client.infer(model, inputs, outputs=out).as_numpy("OUTPUT0")


def expected(srv, dense, keys, rowidx):
    core = srv.repository.get("tiny").backend.core
    return core.predict(dense, keys, rowidx)


def test_metadata_and_health(server) -> None:
    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("tiny")
    assert [i["name"] for i in meta["inputs"]] == ["DES", "CATCOLUMN", "ROWINDEX"]
    assert meta["outputs"][0]["name"] == "OUTPUT0" and meta["versions"] == ["1"]
    assert client.is_model_ready("tiny", "1") and not client.is_model_ready("tiny", "7")


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("key_dtype", [np.int64, np.int32])
def test_infer_matches_session(server, binary, key_dtype) -> None:
    client = httpclient.InferenceServerClient(server.url)
    rng = np.random.default_rng(5)
    for b in (1, 7, 64):
        req = make_request(b, rng, key_dtype)
        out = infer(client, *req, binary=binary)
        assert out.shape == (b,) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected(server, *req), rtol=1e-6)


def test_malformed_requests_get_4xx(server) -> None:
    base = f"http://{server.url}/v2/models/tiny/infer"
    rng = np.random.default_rng(0)
    dense, keys, rowidx = make_request(2, rng)
    good = {"inputs": [
        {"name": "DES", "shape": [4], "datatype": "FP32", "data": dense.tolist()},
        {"name": "CATCOLUMN", "shape": [len(keys)], "datatype": "INT64", "data": keys.tolist()},
        {"name": "ROWINDEX", "shape": [7], "datatype": "INT32", "data": rowidx.tolist()}]}
    with httpx.Client(timeout=10) as c:
        assert c.post(base, json=good).status_code == 200
        des, cat, row = good["inputs"]
        cases = [
            b"{not json", b"[]", json.dumps({"inputs": [{"name": "DES"}]}).encode(),
            json.dumps({"inputs": good["inputs"][:2]}).encode(),
            json.dumps({"inputs": [dict(des, data=[1.0]), cat, row]}).encode(),
            json.dumps({"inputs": [des, cat, dict(row, data=[0, 1, 1, 1, 1, 1, 1])]}).encode(),
            json.dumps({"inputs": [des, cat, dict(row, shape=[5], data=[0] * 5)]}).encode(),
            json.dumps({"inputs": [dict(good["inputs"][0], datatype="BYTES")]}).encode(),
        ]
        for body in cases:
            r = c.post(base, content=body)
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
            assert "error" in r.json()
        r = c.post(base, content=b"{}", headers={"Inference-Header-Content-Length": "99"})
        assert r.status_code == 400
        r = c.post(base, content=b"x" * (2 << 20))
        assert r.status_code == 413
        assert c.post(f"http://{server.url}/v2/models/nope/infer", json=good).status_code == 404
        assert c.post(base, json=good).status_code == 200  # still alive
        metrics = c.get(f"http://{server.url}/metrics").text
        assert "terarec_inference_requests_total" in metrics


def test_concurrent_batching(server) -> None:
    rng = np.random.default_rng(9)
    reqs = [make_request(int(b), rng) for b in rng.integers(1, 20, 48)]

    def one(req):
        client = httpclient.InferenceServerClient(server.url)
        return infer(client, *req)

    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(one, reqs))
    for req, out in zip(reqs, outs):
        np.testing.assert_allclose(out, expected(server, *req), rtol=1e-6)


def test_new_version_while_serving(server, repo, new_version) -> None:
    rng = np.random.default_rng(2)
    req = make_request(8, rng)
    client = httpclient.InferenceServerClient(server.url)
    v1 = infer(client, *req)
    failures: list[BaseException] = []
    results: list[np.ndarray] = []
    stop = threading.Event()

    def hammer() -> None:
        c = httpclient.InferenceServerClient(server.url)
        while not stop.is_set():
            try:
                results.append(infer(c, *req))
            except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    new_version(repo, 2)
    with httpx.Client(timeout=30) as c:
        r = c.post(f"http://{server.url}/v2/repository/models/tiny/load")
        assert r.status_code == 200 and r.json()["version"] == "2"
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not failures, failures[:3]
    v2 = infer(client, *req)
    assert not np.allclose(v1, v2)
    assert all(np.allclose(r, v1) or np.allclose(r, v2) for r in results)
    assert len(results) > 10
    assert client.get_model_metadata("tiny")["versions"] == ["1", "2"]
    assert client.is_model_ready("tiny", "2")


def test_poll_picks_up_versions(repo, new_version) -> None:
    from terarec.serving import ModelRepository

    calls = []
    repo_obj = ModelRepository(repo, loader=lambda m, f, c: calls.append(f.name) or _Dummy())
    assert repo_obj.poll() == ["tiny/1"] and repo_obj.poll() == []
    new_version(repo, 3)
    (repo / "tiny" / "4").mkdir()  # no config.json: ignored
    assert repo_obj.poll() == ["tiny/3"] and calls == ["1", "3"]
    repo_obj.close()


class _Dummy:
    core = None

    def close(self) -> None:
        pass

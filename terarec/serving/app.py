"""HTTP routes of the KServe v2 server (the protocol Triton and ``tritonclient.http`` speak).

Owns the starlette application: health, server/model metadata, readiness, infer (per model and
per version), Triton's repository extension (index, load) and Prometheus ``/metrics``. A model's
inputs are HugeCTR's Triton-backend tensors ``DES`` (FP32, B*dense_dim), ``CATCOLUMN`` (INT64 or
INT32 keys) and ``ROWINDEX`` (INT32 CSR offsets, see :mod:`terarec.inference.csr`); the output
is ``OUTPUT0`` (FP32, B*label_dim). Every error answers ``{"error": message}`` with a 4xx/5xx
status; no request can stop the server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from terarec.errors import TerarecError
from terarec.inference.csr import CsrBatch
from terarec.serving.batching import DynamicBatcher
from terarec.serving.protocol import HEADER, ProtocolError, decode_request, encode_response
from terarec.serving.repository import LoadedModel, ModelRepository
from terarec.utils.imports import require

INPUTS = [("DES", "FP32"), ("CATCOLUMN", "INT64"), ("ROWINDEX", "INT32")]


class _Metrics:
    def __init__(self) -> None:
        prom = require("prometheus_client", extra="serve", feature="terarec serve metrics")
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("terarec_inference_requests", "Infer requests",
                                     ["model", "status"], registry=self.registry)
        self.latency = prom.Histogram("terarec_inference_request_seconds", "Infer latency",
                                      ["model"], registry=self.registry,
                                      buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 5))
        self.batch = prom.Histogram("terarec_inference_batch_samples", "Samples per model call",
                                    ["model"], registry=self.registry,
                                    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384))
        self.version = prom.Gauge("terarec_model_version", "Served version", ["model"],
                                  registry=self.registry)
        self.generate = prom.generate_latest
        self.content_type = prom.CONTENT_TYPE_LATEST


def create_app(repository: ModelRepository, *, max_batch_size: int = 1024,
               max_delay_s: float = 0.002, max_request_bytes: int = 64 << 20) -> Any:
    """The starlette app serving ``repository`` (models must be loaded with ``load``/``poll``)."""
    starlette = require("starlette", extra="serve", feature="terarec serve")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    del starlette
    metrics = _Metrics()

    def error(msg: str, status: int) -> Response:
        return JSONResponse({"error": msg}, status_code=status)

    def model_or_404(name: str, version: str | None) -> LoadedModel:
        entry = repository.get(name)
        if entry is None:
            raise ProtocolError(f"model {name!r} is not loaded"
                                + (f" ({repository.errors[name]})" if name in
                                   repository.errors else ""), 404)
        if version not in (None, "", str(entry.version)):
            raise ProtocolError(f"model {name!r} version {version!r} is not served "
                                f"(current: {entry.version})", 404)
        return entry

    def batcher(entry: LoadedModel) -> DynamicBatcher:
        if entry.batcher is None:
            core = entry.backend.core
            limit = min(max_batch_size, core.max_batchsize)

            def on_batch(samples: int, _n: int) -> None:
                metrics.batch.labels(entry.name).observe(samples)

            entry.batcher = DynamicBatcher(lambda b: core.run(b).cpu().numpy(), limit,
                                           max_delay_s, on_batch)
        return entry.batcher

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        ok = all(repository.get(n) is not None for n in repository.model_names())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(_: Request) -> Response:
        return JSONResponse({"name": "terarec", "version": "0.1.0",
                             "extensions": ["binary_tensor_data", "model_repository"]})

    async def model_meta(req: Request) -> Response:
        try:
            entry = model_or_404(req.path_params["name"], req.path_params.get("version"))
        except ProtocolError as exc:
            return error(str(exc), exc.status)
        return JSONResponse({
            "name": entry.name, "versions": [str(v) for v in repository.versions(entry.name)],
            "platform": "terarec_hugectr",
            "inputs": [{"name": n, "datatype": d, "shape": [-1]} for n, d in INPUTS],
            "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1]}]})

    async def model_ready(req: Request) -> Response:
        try:
            model_or_404(req.path_params["name"], req.path_params.get("version"))
        except ProtocolError as exc:
            return error(str(exc), exc.status)
        return Response(status_code=200)

    async def read_body(req: Request) -> bytes:
        declared = req.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            raise ProtocolError(f"request of {declared} bytes exceeds the limit of "
                                f"{max_request_bytes}", 413)
        chunks, size = [], 0
        async for chunk in req.stream():
            size += len(chunk)
            if size > max_request_bytes:
                raise ProtocolError(f"request exceeds the limit of {max_request_bytes} bytes",
                                    413)
            chunks.append(chunk)
        return b"".join(chunks)

    def to_batch(entry: LoadedModel, inputs: dict[str, np.ndarray]) -> CsrBatch:
        missing = [n for n, _ in INPUTS if n not in inputs]
        if missing:
            raise ProtocolError(f"missing inputs {missing}; expected DES, CATCOLUMN, ROWINDEX")
        keys = inputs["CATCOLUMN"]
        if keys.dtype.kind not in "iu":
            raise ProtocolError("CATCOLUMN must be INT64 or INT32")
        try:
            return entry.backend.core.parse(inputs["DES"].astype(np.float32), keys.astype(
                np.int64), inputs["ROWINDEX"].astype(np.int64))
        except (TerarecError, ValueError) as exc:
            raise ProtocolError(str(exc)) from None

    async def infer(req: Request) -> Response:
        name = req.path_params["name"]
        start = time.perf_counter()
        status = "error"
        try:
            entry = model_or_404(name, req.path_params.get("version"))
            entry.acquire()
            try:
                body = await read_body(req)
                parsed = decode_request(body, req.headers.get(HEADER))
                batch = to_batch(entry, parsed.inputs)
                try:
                    out = await batcher(entry).submit(batch)
                except (TerarecError, ValueError) as exc:
                    raise ProtocolError(str(exc)) from None
            finally:
                entry.release()
            payload, headers = encode_response(
                name, str(entry.version), parsed.id,
                {"OUTPUT0": np.ascontiguousarray(out, dtype=np.float32).reshape(-1)},
                parsed.binary_outputs)
            status = "ok"
            return Response(payload, headers=headers)
        except ProtocolError as exc:
            return error(str(exc), exc.status)
        except Exception as exc:  # never let one request take the server down
            return error(f"internal error: {type(exc).__name__}: {exc}", 500)
        finally:
            metrics.requests.labels(name, status).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - start)

    async def repo_index(_: Request) -> Response:
        rows = []
        for n in repository.model_names():
            e = repository.get(n)
            rows.append({"name": n, "version": str(e.version) if e else "",
                         "state": "READY" if e else "UNAVAILABLE",
                         "reason": repository.errors.get(n, "")})
        return JSONResponse(rows)

    async def repo_load(req: Request) -> Response:
        name = req.path_params["name"]
        try:
            entry = await asyncio.to_thread(repository.load, name)
        except Exception as exc:
            return error(f"cannot load {name!r}: {exc}", 400)
        metrics.version.labels(name).set(entry.version)
        return JSONResponse({"name": name, "version": str(entry.version)})

    async def prom(_: Request) -> Response:
        for n in repository.model_names():
            e = repository.get(n)
            if e is not None:
                metrics.version.labels(n).set(e.version)
        return Response(metrics.generate(metrics.registry), media_type=metrics.content_type)

    m, v = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/v2", server_meta), Route(m, model_meta), Route(v, model_meta),
        Route(m + "/ready", model_ready), Route(v + "/ready", model_ready),
        Route(m + "/infer", infer, methods=["POST"]), Route(v + "/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", repo_index, methods=["POST", "GET"]),
        Route("/v2/repository/models/{name}/load", repo_load, methods=["POST"]),
        Route("/metrics", prom),
    ]
    app = Starlette(routes=routes)
    app.state.repository = repository
    app.state.metrics = metrics
    return app

"""KServe v2 (Triton HTTP) request and response encoding.

Owns decoding of an infer request - JSON tensors, or the binary-tensor extension where the
``Inference-Header-Content-Length`` header gives the size of the leading JSON and each input
with ``parameters.binary_data_size`` takes that many raw little-endian bytes from the rest of
the body, in input order - and encoding of the response (binary when the client asks for it, as
``tritonclient.http`` does by default). Malformed input raises :class:`ProtocolError` carrying the
HTTP status; nothing here knows about models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

#: KServe v2 datatype names -> numpy dtypes (the ones a HugeCTR model uses).
DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
}
HEADER = "inference-header-content-length"


class ProtocolError(Exception):
    """A request the server rejects; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    binary_outputs: bool
    outputs: list[str]


def _tensor(spec: Any, binary: memoryview | None) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError("each input needs a 'name'")
    name, dtype_name = spec["name"], spec.get("datatype")
    if dtype_name not in DTYPES:
        raise ProtocolError(f"input {name!r}: datatype {dtype_name!r} not one of {sorted(DTYPES)}")
    dtype = DTYPES[dtype_name]
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    count = int(np.prod(shape)) if shape else 1
    if binary is not None:
        if len(binary) != count * dtype.itemsize:
            raise ProtocolError(f"input {name!r}: {len(binary)} bytes for shape {shape} "
                                f"of {dtype_name}")
        arr = np.frombuffer(binary, dtype=dtype).copy()
    else:
        if "data" not in spec:
            raise ProtocolError(f"input {name!r} has no 'data'")
        try:
            arr = np.asarray(spec["data"], dtype=dtype).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"input {name!r}: data is not {dtype_name}: {exc}") from None
        if arr.size != count:
            raise ProtocolError(f"input {name!r}: {arr.size} values for shape {shape}")
    return name, arr.reshape(shape)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON or JSON + binary tensors)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER} is not an integer: {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"{HEADER}={n} but the body has {len(body)} bytes")
        head, rest = body[:n], memoryview(body)[n:]
    else:
        head, rest = body, memoryview(b"")
    try:
        doc = json.loads(head or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ProtocolError("request must be a JSON object with an 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    pos = 0
    for spec in doc["inputs"]:
        size = (spec.get("parameters") or {}).get("binary_data_size") if isinstance(
            spec, dict) else None
        chunk = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or pos + size > len(rest):
                raise ProtocolError(f"binary_data_size {size!r} exceeds the binary payload")
            chunk, pos = rest[pos:pos + size], pos + size
        name, arr = _tensor(spec, chunk)
        inputs[name] = arr
    params = doc.get("parameters") or {}
    outs = doc.get("outputs") or []
    binary = bool(params.get("binary_data_output", False)) or any(
        (o.get("parameters") or {}).get("binary_data", False) for o in outs
        if isinstance(o, dict))
    names = [o.get("name") for o in outs if isinstance(o, dict)]
    return InferRequest(doc.get("id"), inputs, binary, [n for n in names if n])


def encode_response(model: str, version: str, request_id: str | None,
                    outputs: dict[str, np.ndarray], binary: bool) -> tuple[bytes, dict[str, str]]:
    """Body and extra headers of an infer response."""
    specs, blobs = [], []
    for name, arr in outputs.items():
        dtype = next(k for k, v in DTYPES.items() if v == arr.dtype.newbyteorder("<"))
        spec: dict[str, Any] = {"name": name, "datatype": dtype, "shape": list(arr.shape)}
        if binary:
            blob = np.ascontiguousarray(arr, dtype=DTYPES[dtype]).tobytes()
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            spec["data"] = arr.reshape(-1).tolist()
        specs.append(spec)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": specs}
    if request_id is not None:
        doc["id"] = request_id
    head = json.dumps(doc).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    HEADER: str(len(head))}

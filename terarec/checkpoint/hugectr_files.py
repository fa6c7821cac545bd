"""Read and write HugeCTR's model files byte for byte (§17 of the reference).

* ``{prefix}_dense_{iter}.model``: little-endian float32 of every trainable dense tensor in
  layer order, row-major, no header.
* ``{prefix}_opt_dense_{iter}.model``: the dense optimizer's state tensors (Adam: all m then
  all v), float32.
* ``{prefix}_dense_{iter}.model.ntp.json``: non-trainable parameters (BatchNorm running stats).
* ``{prefix}{i}_sparse_{iter}.model/``: ``key`` (int64), ``emb_vector`` (float32 [n, vec]),
  and ``slot_id`` (uint64, LocalizedSlot embeddings only).
* ``{prefix}{i}_opt_sparse_{iter}.model``: sparse optimizer state (implementation-defined, as
  in HugeCTR).

Remote URLs (``s3://``, ``hdfs://``, ...) are rejected (``terarec.utils.paths``). Every write
goes to a temporary name and is renamed into place after fsync, so a crash never
leaves a half-written file. Every read checks sizes and names the file on mismatch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terarec.errors import DataError
from terarec.utils.atomic import atomic_dir, write_bytes_atomic
from terarec.utils.paths import check_local_path


def dense_path(prefix: str, it: int) -> str:
    return f"{prefix}_dense_{it}.model"


def dense_opt_path(prefix: str, it: int) -> str:
    return f"{prefix}_opt_dense_{it}.model"


def sparse_path(prefix: str, index: int, it: int) -> str:
    return f"{prefix}{index}_sparse_{it}.model"


def sparse_opt_path(prefix: str, index: int, it: int) -> str:
    return f"{prefix}{index}_opt_sparse_{it}.model"


# ------------------------------------------------------------------------------ dense
def tensors_to_bytes(tensors: list[torch.Tensor]) -> bytes:
    if not tensors:
        return b""
    flat = torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors])
    return flat.numpy().astype("<f4", copy=False).tobytes()


def write_dense(tensors: list[torch.Tensor], path: str | os.PathLike[str]) -> None:
    write_bytes_atomic(path, tensors_to_bytes(tensors))


def read_float32_file(path: str | os.PathLike[str], expected_count: int | None,
                      what: str) -> np.ndarray:
    path = str(check_local_path(path, f"reading the {what} file"))
    if not os.path.isfile(path):
        raise DataError(path, f"{what} file not found")
    size = os.path.getsize(path)
    if expected_count is not None and size != expected_count * 4:
        raise DataError(path, f"{what} has {size} bytes, expected {expected_count * 4} "
                        f"({expected_count} float32 values for this model)")
    if size % 4:
        raise DataError(path, f"{what} size {size} is not a multiple of 4 bytes")
    return np.fromfile(path, dtype="<f4")


def read_dense_into(tensors: list[torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Load a dense model file into ``tensors`` in place (exact byte count required)."""
    total = sum(t.numel() for t in tensors)
    data = read_float32_file(path, total, "dense model")
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(torch.from_numpy(data[offset:offset + n].copy()).reshape(t.shape))
            offset += n


def write_ntp(state: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    write_bytes_atomic(path, (json.dumps({"layers": state}, indent=2) + "\n").encode())


def read_ntp(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    check_local_path(path, "reading the non-trainable parameters file")
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(str(path), f"cannot read non-trainable parameters: {exc}") from None
    layers = obj.get("layers") if isinstance(obj, dict) else None
    if not isinstance(layers, list):
        raise DataError(str(path), 'expected {"layers": [...]}')
    return layers


# ------------------------------------------------------------------------------ sparse
def write_sparse_folder(
    path: str | os.PathLike[str],
    keys: np.ndarray,
    vectors: np.ndarray,
    slot_ids: np.ndarray | None = None,
) -> None:
    """Write one sparse model folder atomically (``key``, ``emb_vector``, optional ``slot_id``)."""
    with atomic_dir(path) as tmp:
        write_sparse_files(tmp, keys, vectors, slot_ids)


def write_sparse_files(folder: Path, keys: np.ndarray, vectors: np.ndarray,
                       slot_ids: np.ndarray | None = None) -> None:
    """``key`` / ``emb_vector`` (/ ``slot_id``) into ``folder`` (a folder being written, e.g.
    the temporary one of :func:`~terarec.utils.atomic.atomic_dir`)."""
    keys = np.ascontiguousarray(keys, dtype="<i8")
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if vectors.ndim != 2 or vectors.shape[0] != keys.shape[0]:
        raise ValueError(f"vectors shape {vectors.shape} does not match {keys.shape[0]} keys")
    keys.tofile(folder / "key")
    vectors.tofile(folder / "emb_vector")
    if slot_ids is not None:
        np.ascontiguousarray(slot_ids, dtype="<u8").tofile(folder / "slot_id")


def read_sparse_folder(
    path: str | os.PathLike[str], vec_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read ``key`` / ``emb_vector`` (/ ``slot_id``) and check that their sizes agree."""
    folder = Path(check_local_path(path, "reading a sparse model folder"))
    key_file, vec_file, slot_file = folder / "key", folder / "emb_vector", folder / "slot_id"
    if not folder.is_dir():
        raise DataError(str(folder), "sparse model folder not found")
    for f in (key_file, vec_file):
        if not f.is_file():
            raise DataError(str(f), "missing file of the sparse model folder")
    ksize, vsize = key_file.stat().st_size, vec_file.stat().st_size
    if ksize % 8:
        raise DataError(str(key_file), f"size {ksize} is not a multiple of 8 (int64 keys)")
    n = ksize // 8
    if vsize != n * vec_size * 4:
        raise DataError(str(vec_file), f"has {vsize} bytes, expected {n * vec_size * 4} "
                        f"({n} keys x embedding_vec_size {vec_size} x 4 bytes)")
    keys = np.fromfile(key_file, dtype="<i8")
    vectors = np.fromfile(vec_file, dtype="<f4").reshape(n, vec_size)
    slots = None
    if slot_file.is_file():
        if slot_file.stat().st_size != n * 8:
            raise DataError(str(slot_file), f"has {slot_file.stat().st_size} bytes, expected "
                            f"{n * 8} ({n} keys x 8 bytes)")
        slots = np.fromfile(slot_file, dtype="<u8")
    return keys, vectors, slots

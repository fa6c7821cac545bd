"""Reading HugeCTR sparse model folders (§17.4) for the parameter server.

Owns the validation of a ``*_sparse_*.model/`` folder: ``key`` (int64 per key, even when
``i64_input_key=False``), ``emb_vector`` (float32 ``[num_keys, embedding_vec_size]``) and the
optional ``slot_id`` (8 bytes per key, LocalizedSlot embeddings). Every size problem raises a
:class:`DataError` naming the offending file. The files are memory-mapped, so loading a large
table streams it in chunks instead of copying it whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from terarec.errors import DataError
from terarec.utils.paths import check_local_path


def read_sparse_model(folder: str | os.PathLike[str], dim: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(keys int64 (n,), vectors float32 (n, dim))`` of a sparse model folder.

    Args:
        folder: the ``.model`` folder.
        dim: expected embedding vector size; inferred from the file sizes when ``None``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(str(folder), "sparse model folder not found (expected a folder holding "
                        "'key' and 'emb_vector')")
    key_path, vec_path = folder / "key", folder / "emb_vector"
    for p in (key_path, vec_path):
        if not p.is_file():
            raise DataError(str(p), "missing file of the sparse model folder")
    key_bytes, vec_bytes = key_path.stat().st_size, vec_path.stat().st_size
    if key_bytes % 8:
        raise DataError(str(key_path), f"size {key_bytes} bytes is not a multiple of 8 "
                        "(keys are int64)")
    n = key_bytes // 8
    if vec_bytes % 4:
        raise DataError(str(vec_path), f"size {vec_bytes} bytes is not a multiple of 4 "
                        "(vectors are float32)")
    if dim is None:
        if n == 0 or (vec_bytes // 4) % n:
            raise DataError(str(vec_path), f"{vec_bytes} bytes cannot hold one float32 vector "
                            f"for each of the {n} keys in {key_path.name!r}")
        dim = vec_bytes // 4 // n
    if vec_bytes != n * dim * 4:
        raise DataError(str(vec_path), f"expected {n} keys x {dim} floats x 4 bytes = "
                        f"{n * dim * 4} bytes (from {n} keys in 'key' and "
                        f"embedding_vec_size={dim}), found {vec_bytes} bytes")
    slot_path = folder / "slot_id"
    if slot_path.is_file() and slot_path.stat().st_size != n * 8:
        raise DataError(str(slot_path), f"expected {n * 8} bytes (8 per key), found "
                        f"{slot_path.stat().st_size}")
    if n == 0:
        return np.empty(0, np.int64), np.empty((0, dim), np.float32)
    keys = np.memmap(key_path, dtype="<i8", mode="r", shape=(n,))
    vecs = np.memmap(vec_path, dtype="<f4", mode="r", shape=(n, dim))
    return keys, vecs


def iter_chunks(keys: np.ndarray, vectors: np.ndarray, chunk: int = 1 << 18
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(keys, vectors)`` slices of at most ``chunk`` rows, as in-memory arrays."""
    for lo in range(0, keys.shape[0], chunk):
        yield (np.asarray(keys[lo:lo + chunk], dtype=np.int64),
               np.asarray(vectors[lo:lo + chunk], dtype=np.float32))


def write_sparse_model(folder: str | os.PathLike[str], keys: np.ndarray,
                       vectors: np.ndarray) -> Path:
    """Write ``key`` and ``emb_vector`` in HugeCTR's layout (tests, benchmarks, examples)."""
    folder = Path(check_local_path(folder, "write_sparse_model(folder=...)"))
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(keys, dtype="<i8").tofile(folder / "key")
    np.asarray(vectors, dtype="<f4").tofile(folder / "emb_vector")
    return folder

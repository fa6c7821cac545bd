"""Persistent tier: an embedded RocksDB database on disk (HugeCTR's ``rocks_db`` backend).

Owns reading and writing one table's rows in a RocksDB folder through ``rocksdict`` (pip extra
``kv``). One database folder holds every table of every model: a row's key is the table prefix
``hps_et.<model>.<table>/`` followed by the int64 key (8 bytes, big-endian, so a table's rows
are contiguous and ordered), its value the raw float32 bytes of the vector. Reads use batched
multi-get and writes one ``WriteBatch`` per ``max_batch_size`` rows. A database folder is opened
once per process and shared by the tables that live in it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from terarec.inference.tiers.types import UNBOUNDED, EmbeddingTier, as_keys, as_vectors
from terarec.utils.imports import require

_OPEN: dict[tuple[str, bool], Any] = {}
_OPEN_LOCK = threading.Lock()


def _open_db(path: str, read_only: bool) -> Any:
    rocksdict = require("rocksdict", extra="kv", feature="The rocks_db persistent database")
    with _OPEN_LOCK:
        db = _OPEN.get((path, read_only))
        if db is None:
            opts = rocksdict.Options(raw_mode=True)
            if read_only:
                db = rocksdict.Rdict(path, options=opts,
                                     access_type=rocksdict.AccessType.read_only())
            else:
                db = rocksdict.Rdict(path, options=opts)
            _OPEN[(path, read_only)] = db
        return db


def close_all() -> None:
    """Close every database this process opened (tests and shutdown)."""
    with _OPEN_LOCK:
        for db in _OPEN.values():
            db.close()
        _OPEN.clear()


def _encode_keys(prefix: bytes, keys: np.ndarray) -> list[bytes]:
    raw = keys.astype(">i8").tobytes()
    return [prefix + raw[i:i + 8] for i in range(0, len(raw), 8)]


class RocksDBTier(EmbeddingTier):
    """One table stored in a RocksDB folder.

    Args:
        name: table prefix, e.g. ``hps_et.wdl.sparse_embedding1``.
        dim: vector size.
        path: database folder (created when missing unless ``read_only``).
        read_only: open read-only; ``insert``/``evict``/``load`` then raise.
        max_batch_size: rows per multi-get / write batch.
    """

    def __init__(self, name: str, dim: int, path: str, read_only: bool = False,
                 max_batch_size: int = 65536) -> None:
        self.name = name
        self.dim = int(dim)
        self.path = str(path)
        self.read_only = bool(read_only)
        self.max_batch_size = max(int(max_batch_size), 1)
        self._prefix = name.encode() + b"/"
        self._db = _open_db(self.path, self.read_only)
        self._wb_cls = require("rocksdict", "kv", "rocks_db").WriteBatch

    @property
    def capacity(self) -> int:
        return UNBOUNDED

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"RocksDB table {self.name!r} at {self.path!r} is read_only")

    def lookup(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        keys = as_keys(keys)
        out = np.zeros((keys.shape[0], self.dim), np.float32)
        found = np.zeros(keys.shape[0], bool)
        nbytes = 4 * self.dim
        for lo in range(0, keys.shape[0], self.max_batch_size):
            chunk = keys[lo:lo + self.max_batch_size]
            values = self._db.get(_encode_keys(self._prefix, chunk))
            hit = np.fromiter((v is not None for v in values), bool, len(values))
            if hit.any():
                blob = b"".join(v for v in values if v is not None)
                if len(blob) != int(hit.sum()) * nbytes:
                    raise ValueError(f"RocksDB table {self.name!r}: stored vectors are not "
                                     f"{self.dim} float32 values")
                out[lo:lo + chunk.shape[0]][hit] = np.frombuffer(blob, np.float32).reshape(
                    -1, self.dim)
            found[lo:lo + chunk.shape[0]] = hit
        return out, found

    def insert(self, keys: Any, vectors: Any) -> None:
        self._check_writable()
        keys = as_keys(keys)
        vectors = as_vectors(vectors, keys.shape[0], self.dim)
        nbytes = 4 * self.dim
        for lo in range(0, keys.shape[0], self.max_batch_size):
            chunk = keys[lo:lo + self.max_batch_size]
            blob = vectors[lo:lo + chunk.shape[0]].tobytes()
            wb = self._wb_cls(raw_mode=True)
            for i, k in enumerate(_encode_keys(self._prefix, chunk)):
                wb.put(k, blob[i * nbytes:(i + 1) * nbytes])
            self._db.write(wb)

    def evict(self, keys: Any) -> int:
        self._check_writable()
        keys = np.unique(as_keys(keys))
        present = int(self.lookup(keys)[1].sum())
        wb = self._wb_cls(raw_mode=True)
        for k in _encode_keys(self._prefix, keys):
            wb.delete(k)
        self._db.write(wb)
        return present

    def _iter(self) -> Any:
        it = self._db.iter()
        it.seek(self._prefix)
        while it.valid() and it.key().startswith(self._prefix):
            yield it.key(), it.value()
            it.next()

    def size(self) -> int:
        return sum(1 for _ in self._iter())

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        ks, vs = [], []
        plen = len(self._prefix)
        for k, v in self._iter():
            ks.append(k[plen:])
            vs.append(v)
        keys = np.frombuffer(b"".join(ks), ">i8").astype(np.int64)
        vals = np.frombuffer(b"".join(vs), np.float32).reshape(-1, self.dim).copy()
        return keys, vals

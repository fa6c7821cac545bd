"""The embedding-tier protocol shared by every storage level of the parameter server.

Owns only the abstract contract (:class:`EmbeddingTier`) and tiny helpers every tier uses to
normalise keys and vectors and to spread keys over partitions. One tier instance serves one
embedding table; implementations live one per file next to this one and never import each
other. No backend-specific type appears here (lesson 3).
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch

# Golden-ratio multiplier (Fibonacci hashing) used to spread keys over partitions.
_MIX = np.uint64(0x9E3779B97F4A7C15)


def as_keys(keys: Any) -> np.ndarray:
    """Return ``keys`` as a contiguous 1-D int64 numpy array (accepts numpy, torch, lists)."""
    if isinstance(keys, torch.Tensor):
        keys = keys.detach().to("cpu").numpy()
    arr = np.ascontiguousarray(np.asarray(keys).reshape(-1))
    if arr.dtype != np.int64:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"embedding keys must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    return arr


def as_vectors(vectors: Any, n: int, dim: int) -> np.ndarray:
    """Return ``vectors`` as a contiguous float32 array of shape ``(n, dim)``."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu").numpy()
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.size != n * dim:
        raise ValueError(f"expected {n} vectors of size {dim}, got an array of shape {arr.shape}")
    return arr.reshape(n, dim)


def partition_of(keys: np.ndarray, num_partitions: int) -> np.ndarray:
    """Partition index of each key (stable across processes and tiers)."""
    if num_partitions <= 1:
        return np.zeros(keys.shape[0], dtype=np.int64)
    with np.errstate(over="ignore"):
        mixed = keys.view(np.uint64) * _MIX
    return ((mixed >> np.uint64(32)) % np.uint64(num_partitions)).astype(np.int64)


class EmbeddingTier(abc.ABC):
    """One storage level holding the rows of one embedding table.

    Every tier maps int64 keys to float32 vectors of a fixed ``dim`` and returns identical
    vectors for identical keys. Methods accept numpy arrays, torch tensors or lists of keys.

    Attributes:
        name: the table name (``hps_et`` naming is up to the parameter server).
        dim: embedding vector size.
    """

    name: str
    dim: int

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """Most rows the tier keeps before evicting (``2**63-1`` when unbounded)."""

    @abc.abstractmethod
    def lookup(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(vectors float32 (n, dim), found bool (n,))``; rows of missing keys are 0."""

    @abc.abstractmethod
    def insert(self, keys: Any, vectors: Any) -> None:
        """Insert or overwrite rows; may evict other rows to stay within ``capacity``."""

    @abc.abstractmethod
    def evict(self, keys: Any) -> int:
        """Remove the given keys; return how many were present."""

    @abc.abstractmethod
    def size(self) -> int:
        """Number of rows currently held."""

    @abc.abstractmethod
    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        """Return every ``(keys int64 (n,), vectors float32 (n, dim))`` held (any order)."""

    def load(self, keys: Any, vectors: Any) -> None:
        """Bulk-load rows (default: :meth:`insert`)."""
        self.insert(keys, vectors)

    def contains(self, keys: Any) -> np.ndarray:
        """Boolean mask of the keys held."""
        return self.lookup(keys)[1]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files (no-op by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, size={self.size()})"


UNBOUNDED = 2**63 - 1

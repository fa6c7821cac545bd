"""Volatile CPU-memory tier: HugeCTR's ``hash_map`` / ``parallel_hash_map`` backends.

Owns a partitioned in-memory table. Each partition keeps its keys sorted (lookups are a
vectorised ``np.searchsorted``), a float32 value block and per-row access statistics used by
the overflow policies. When a partition grows past ``overflow_margin`` rows it evicts, by
``evict_random`` / ``evict_least_used`` / ``evict_oldest``, down to
``overflow_margin * overflow_resolution_target`` rows (HugeCTR's rule). ``parallel_hash_map``
works on the partitions of a batch in a thread pool (numpy releases the GIL); ``hash_map`` does
them one after another. ``multi_process_hash_map`` (a ``/dev/shm`` table shared between
processes in HugeCTR) is served by the same in-process table.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from terarec.inference.tiers.types import (
    UNBOUNDED,
    EmbeddingTier,
    as_keys,
    as_vectors,
    partition_of,
)


class _Partition:
    """Sorted keys + values + access statistics of one partition (guarded by ``lock``)."""

    def __init__(self, dim: int) -> None:
        self.keys = np.empty(0, np.int64)
        self.values = np.empty((0, dim), np.float32)
        self.last_access = np.empty(0, np.int64)
        self.hits = np.empty(0, np.int64)
        self.lock = threading.Lock()

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.keys, keys)
        pos_c = np.minimum(pos, max(self.keys.shape[0] - 1, 0))
        found = (pos < self.keys.shape[0]) & (self.keys[pos_c] == keys) if self.keys.size else (
            np.zeros(keys.shape[0], bool))
        return pos_c, found

    def take(self, keys: np.ndarray, tick: int) -> tuple[np.ndarray, np.ndarray]:
        pos, found = self.find(keys)
        out = np.zeros((keys.shape[0], self.values.shape[1]), np.float32)
        rows = pos[found]
        out[found] = self.values[rows]
        self.last_access[rows] = tick
        np.add.at(self.hits, rows, 1)
        return out, found

    def put(self, keys: np.ndarray, vectors: np.ndarray, tick: int) -> None:
        keys, first = np.unique(keys[::-1], return_index=True)  # last write of a key wins
        vectors = vectors[::-1][first]
        pos, found = self.find(keys)
        self.values[pos[found]] = vectors[found]
        self.last_access[pos[found]] = tick
        new = ~found
        if new.any():
            all_keys = np.concatenate([self.keys, keys[new]])
            order = np.argsort(all_keys, kind="stable")
            self.keys = all_keys[order]
            self.values = np.concatenate([self.values, vectors[new]])[order]
            self.last_access = np.concatenate(
                [self.last_access, np.full(int(new.sum()), tick, np.int64)])[order]
            self.hits = np.concatenate([self.hits, np.zeros(int(new.sum()), np.int64)])[order]

    def keep(self, mask: np.ndarray) -> None:
        self.keys = self.keys[mask]
        self.values = self.values[mask]
        self.last_access = self.last_access[mask]
        self.hits = self.hits[mask]


def _victims_random(p: _Partition, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(p.keys.shape[0], size=n, replace=False)


def _victims_least_used(p: _Partition, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.argpartition(p.hits, n - 1)[:n] if n < p.hits.size else np.arange(p.hits.size)


def _victims_oldest(p: _Partition, n: int, rng: np.random.Generator) -> np.ndarray:
    la = p.last_access
    return np.argpartition(la, n - 1)[:n] if n < la.size else np.arange(la.size)


#: Overflow policies keyed by ``DatabaseOverflowPolicy_t`` member names.
OVERFLOW_POLICIES: dict[str, Callable[[_Partition, int, np.random.Generator], np.ndarray]] = {
    "evict_random": _victims_random,
    "evict_least_used": _victims_least_used,
    "evict_oldest": _victims_oldest,
}


class HostMemoryTier(EmbeddingTier):
    """Partitioned in-memory table for one embedding table.

    Args:
        name: table name.
        dim: vector size.
        num_partitions: number of partitions (keys are spread by a multiplicative hash).
        overflow_margin: rows per partition before eviction starts (``2**64-1``: never).
        overflow_policy: ``evict_random`` | ``evict_least_used`` | ``evict_oldest``.
        overflow_resolution_target: evict down to ``margin * target`` rows.
        parallel: process the partitions of a batch in a thread pool.
        seed: seed of the ``evict_random`` generator.
    """

    def __init__(self, name: str, dim: int, num_partitions: int = 1,
                 overflow_margin: int = 2**64 - 1, overflow_policy: str = "evict_random",
                 overflow_resolution_target: float = 0.8, parallel: bool = False,
                 seed: int = 0) -> None:
        self.name = name
        self.dim = int(dim)
        self.num_partitions = max(int(num_partitions), 1)
        self.overflow_margin = int(overflow_margin)
        self.overflow_policy = overflow_policy
        self._pick = OVERFLOW_POLICIES[overflow_policy]
        self.target = float(overflow_resolution_target)
        self._parts = [_Partition(self.dim) for _ in range(self.num_partitions)]
        self._rng = np.random.default_rng(seed)
        self._tick = 0
        self._tick_lock = threading.Lock()
        self._pool = (ThreadPoolExecutor(min(self.num_partitions, 16), "terarec-hashmap")
                      if parallel and self.num_partitions > 1 else None)

    @property
    def capacity(self) -> int:
        return min(self.overflow_margin * self.num_partitions, UNBOUNDED)

    def _next_tick(self) -> int:
        with self._tick_lock:
            self._tick += 1
            return self._tick

    def _each(self, keys: np.ndarray, fn: Callable[[int, np.ndarray], Any]) -> None:
        """Call ``fn(partition_id, row_indices)`` for every partition that has keys."""
        part = partition_of(keys, self.num_partitions)
        if self.num_partitions == 1:
            fn(0, np.arange(keys.shape[0]))
            return
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.num_partitions + 1))
        jobs = [(p, order[bounds[p]:bounds[p + 1]]) for p in range(self.num_partitions)
                if bounds[p + 1] > bounds[p]]
        if self._pool is not None and len(jobs) > 1 and keys.shape[0] >= 4096:
            list(self._pool.map(lambda j: fn(*j), jobs))
        else:
            for j in jobs:
                fn(*j)

    def lookup(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        keys = as_keys(keys)
        out = np.zeros((keys.shape[0], self.dim), np.float32)
        found = np.zeros(keys.shape[0], bool)
        tick = self._next_tick()

        def one(p: int, idx: np.ndarray) -> None:
            part = self._parts[p]
            with part.lock:
                v, f = part.take(keys[idx], tick)
            out[idx] = v
            found[idx] = f

        self._each(keys, one)
        return out, found

    def insert(self, keys: Any, vectors: Any) -> None:
        keys = as_keys(keys)
        vectors = as_vectors(vectors, keys.shape[0], self.dim)
        tick = self._next_tick()

        def one(p: int, idx: np.ndarray) -> None:
            part = self._parts[p]
            with part.lock:
                part.put(keys[idx], vectors[idx], tick)
                self._resolve_overflow(part)

        self._each(keys, one)

    def _resolve_overflow(self, part: _Partition) -> None:
        n = part.keys.shape[0]
        if n <= self.overflow_margin:
            return
        keep_n = int(self.overflow_margin * self.target)
        victims = self._pick(part, n - keep_n, self._rng)
        mask = np.ones(n, bool)
        mask[victims] = False
        part.keep(mask)

    def evict(self, keys: Any) -> int:
        keys = as_keys(keys)
        count = [0]

        def one(p: int, idx: np.ndarray) -> None:
            part = self._parts[p]
            with part.lock:
                pos, found = part.find(np.unique(keys[idx]))
                mask = np.ones(part.keys.shape[0], bool)
                mask[pos[found]] = False
                part.keep(mask)
                count[0] += int(found.sum())

        self._each(keys, one)
        return count[0]

    def size(self) -> int:
        return sum(p.keys.shape[0] for p in self._parts)

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        keys, vals = [], []
        for p in self._parts:
            with p.lock:
                keys.append(p.keys.copy())
                vals.append(p.values.copy())
        return np.concatenate(keys), np.concatenate(vals).reshape(-1, self.dim)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

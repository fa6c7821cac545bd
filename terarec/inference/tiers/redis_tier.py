"""Distributed volatile tier on Redis (HugeCTR's ``redis_cluster`` backend).

Owns reading and writing one table's rows in Redis through the ``redis`` client (pip extra
``redis``). Rows are spread over ``num_partitions`` Redis hashes named
``<table prefix>/p<i>``; a field is the int64 key (8 bytes big-endian), its value the float32
vector bytes. Every batch becomes one pipeline of ``HMGET`` / ``HSET`` commands, one per
partition touched. It works with a plain ``redis-server`` (no cluster mode needed): ``address``
is ``host:port`` (the first of a comma-separated list is used).

With a finite ``overflow_margin`` a sorted set ``<partition>/t`` records each row's last access
time; a partition above the margin is trimmed to ``margin * overflow_resolution_target`` rows,
oldest first (``evict_oldest`` and ``evict_least_used``) or at random (``evict_random``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from terarec.inference.tiers.types import (
    UNBOUNDED,
    EmbeddingTier,
    as_keys,
    as_vectors,
    partition_of,
)
from terarec.utils.imports import require


def connect(address: str, user_name: str = "default", password: str = "") -> Any:
    """A ``redis.Redis`` client for ``host:port`` (raises a clear error when unreachable)."""
    redis = require("redis", extra="redis", feature="The redis_cluster volatile database")
    first = address.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    client = redis.Redis(host=host or "127.0.0.1", port=int(port or 6379),
                         username=user_name or None, password=password or None)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        raise ConnectionError(f"cannot reach Redis at {first!r}: {exc}") from exc
    return client


class RedisTier(EmbeddingTier):
    """One table stored in Redis hashes.

    Args:
        name: table prefix, e.g. ``hps_et.wdl.sparse_embedding1``.
        dim: vector size.
        client: a ``redis.Redis`` connection (see :func:`connect`).
        num_partitions: number of hashes the rows are spread over.
        overflow_margin: rows per partition before eviction (``2**64-1``: never).
        overflow_policy: ``evict_random`` | ``evict_least_used`` | ``evict_oldest``.
        overflow_resolution_target: evict down to ``margin * target`` rows.
        max_batch_size: keys per pipeline.
    """

    def __init__(self, name: str, dim: int, client: Any, num_partitions: int = 8,
                 overflow_margin: int = 2**64 - 1, overflow_policy: str = "evict_random",
                 overflow_resolution_target: float = 0.8, max_batch_size: int = 65536) -> None:
        self.name = name
        self.dim = int(dim)
        self.client = client
        self.num_partitions = max(int(num_partitions), 1)
        self.overflow_margin = int(overflow_margin)
        self.overflow_policy = overflow_policy
        self.target = float(overflow_resolution_target)
        self.max_batch_size = max(int(max_batch_size), 1)
        self._track = self.overflow_margin < UNBOUNDED

    @property
    def capacity(self) -> int:
        return min(self.overflow_margin * self.num_partitions, UNBOUNDED)

    def _hash(self, p: int) -> str:
        return f"{self.name}/p{p}"

    def _groups(self, keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
        part = partition_of(keys, self.num_partitions)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.num_partitions + 1))
        return [(p, order[bounds[p]:bounds[p + 1]]) for p in range(self.num_partitions)
                if bounds[p + 1] > bounds[p]]

    @staticmethod
    def _fields(keys: np.ndarray) -> list[bytes]:
        raw = keys.astype(">i8").tobytes()
        return [raw[i:i + 8] for i in range(0, len(raw), 8)]

    def lookup(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        keys = as_keys(keys)
        out = np.zeros((keys.shape[0], self.dim), np.float32)
        found = np.zeros(keys.shape[0], bool)
        now = time.time()
        for lo in range(0, keys.shape[0], self.max_batch_size):
            chunk = keys[lo:lo + self.max_batch_size]
            groups = self._groups(chunk)
            pipe = self.client.pipeline(transaction=False)
            for p, idx in groups:
                pipe.hmget(self._hash(p), self._fields(chunk[idx]))
            replies = pipe.execute()
            touch = self.client.pipeline(transaction=False) if self._track else None
            for (p, idx), values in zip(groups, replies):
                hit = np.fromiter((v is not None for v in values), bool, len(values))
                if hit.any():
                    blob = b"".join(v for v in values if v is not None)
                    out[lo + idx[hit]] = np.frombuffer(blob, np.float32).reshape(-1, self.dim)
                    if touch is not None:
                        fields = self._fields(chunk[idx[hit]])
                        touch.zadd(self._hash(p) + "/t", dict.fromkeys(fields, now))
                found[lo + idx] = hit
            if touch is not None:
                touch.execute()
        return out, found

    def insert(self, keys: Any, vectors: Any) -> None:
        keys = as_keys(keys)
        vectors = as_vectors(vectors, keys.shape[0], self.dim)
        nbytes = 4 * self.dim
        now = time.time()
        touched: set[int] = set()
        for lo in range(0, keys.shape[0], self.max_batch_size):
            chunk = keys[lo:lo + self.max_batch_size]
            pipe = self.client.pipeline(transaction=False)
            for p, idx in self._groups(chunk):
                blob = vectors[lo + idx].tobytes()
                fields = self._fields(chunk[idx])
                mapping = {f: blob[i * nbytes:(i + 1) * nbytes] for i, f in enumerate(fields)}
                pipe.hset(self._hash(p), mapping=mapping)
                if self._track:
                    pipe.zadd(self._hash(p) + "/t", dict.fromkeys(fields, now))
                touched.add(p)
            pipe.execute()
        if self._track:
            for p in touched:
                self._resolve_overflow(p)

    def _resolve_overflow(self, p: int) -> None:
        h = self._hash(p)
        n = int(self.client.hlen(h))
        if n <= self.overflow_margin:
            return
        excess = n - int(self.overflow_margin * self.target)
        if self.overflow_policy == "evict_random":
            victims = self.client.hrandfield(h, excess) or []
        else:
            victims = self.client.zrange(h + "/t", 0, excess - 1)
        if victims:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(h, *victims)
            pipe.zrem(h + "/t", *victims)
            pipe.execute()

    def evict(self, keys: Any) -> int:
        keys = np.unique(as_keys(keys))
        pipe = self.client.pipeline(transaction=False)
        groups = self._groups(keys)
        for p, idx in groups:
            fields = self._fields(keys[idx])
            pipe.hdel(self._hash(p), *fields)
            pipe.zrem(self._hash(p) + "/t", *fields)
        replies = pipe.execute()
        return int(sum(replies[0::2]))

    def size(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for p in range(self.num_partitions):
            pipe.hlen(self._hash(p))
        return int(sum(pipe.execute()))

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        ks, vs = [], []
        for p in range(self.num_partitions):
            for field_, value in self.client.hscan_iter(self._hash(p), count=10000):
                ks.append(field_)
                vs.append(value)
        keys = np.frombuffer(b"".join(ks), ">i8").astype(np.int64)
        return keys, np.frombuffer(b"".join(vs), np.float32).reshape(-1, self.dim).copy()

    def clear(self) -> None:
        """Delete every hash of this table (used before loading a new model version)."""
        names = [self._hash(p) for p in range(self.num_partitions)]
        self.client.delete(*names, *[n + "/t" for n in names])

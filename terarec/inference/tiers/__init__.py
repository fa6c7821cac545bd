"""Storage tiers of the parameter server and the factory that builds them from HugeCTR params.

Owns the registry ``DATABASES`` keyed by ``DatabaseType_t`` member names (``hash_map``,
``parallel_hash_map``, ``multi_process_hash_map``, ``redis_cluster``, ``rocks_db``). Each
factory takes the database params, the table's prefix (``hps_et.<model>.<table>``) and its vector
size and returns an :class:`EmbeddingTier`. Backends with optional dependencies are imported
only when their factory runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from terarec.inference.tiers.gpu_cache import EmbeddingCache
from terarec.inference.tiers.host_memory import HostMemoryTier
from terarec.inference.tiers.types import EmbeddingTier
from terarec.utils.registry import Registry

TierFactory = Callable[[Any, str, int], EmbeddingTier]
DATABASES: Registry[TierFactory] = Registry("database type")


def _host(parallel: bool) -> TierFactory:
    def make(params: Any, prefix: str, dim: int) -> EmbeddingTier:
        return HostMemoryTier(
            prefix, dim, num_partitions=params.num_partitions,
            overflow_margin=params.overflow_margin,
            overflow_policy=params.overflow_policy.name,
            overflow_resolution_target=params.overflow_resolution_target, parallel=parallel)
    return make


_REDIS_CLIENTS: dict[tuple[str, str], Any] = {}


def _redis(params: Any, prefix: str, dim: int) -> EmbeddingTier:
    from terarec.inference.tiers.redis_tier import RedisTier, connect

    key = (params.address, params.user_name)
    if key not in _REDIS_CLIENTS:
        _REDIS_CLIENTS[key] = connect(params.address, params.user_name, params.password)
    return RedisTier(prefix, dim, _REDIS_CLIENTS[key], num_partitions=params.num_partitions,
                     overflow_margin=params.overflow_margin,
                     overflow_policy=params.overflow_policy.name,
                     overflow_resolution_target=params.overflow_resolution_target,
                     max_batch_size=params.max_batch_size)


def _rocksdb(params: Any, prefix: str, dim: int) -> EmbeddingTier:
    from terarec.inference.tiers.persistent import RocksDBTier

    return RocksDBTier(prefix, dim, params.path, read_only=params.read_only,
                       max_batch_size=params.max_batch_size)


DATABASES.add("hash_map", _host(parallel=False))
DATABASES.add("parallel_hash_map", _host(parallel=True))
# HugeCTR shares this one between processes through /dev/shm; terarec keeps it in-process.
DATABASES.add("multi_process_hash_map", _host(parallel=True))
DATABASES.add("redis_cluster", _redis)
DATABASES.add("rocks_db", _rocksdb)


def make_tier(type_name: str, params: Any, prefix: str, dim: int) -> EmbeddingTier:
    """Build the tier registered under ``type_name`` (a ``DatabaseType_t`` member name)."""
    return DATABASES.get(type_name, "database type")(params, prefix, dim)


__all__ = ["DATABASES", "EmbeddingCache", "EmbeddingTier", "HostMemoryTier", "make_tier"]

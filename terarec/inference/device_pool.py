"""The session's device fast path: cache lookup + pooling of every table with one host sync.

Owns :class:`DevicePooler`. For a :class:`DeviceCsr` it

1. locks the device embedding caches of the model (so that slots stay put until step 4),
2. per table, with no host sync: probes the cache (``searchsorted`` over the cache's sorted
   keys -> slot, hit) and pools straight from the cache rows with ``embedding_bag`` (sum or
   mean), so a warm cache costs no per-key Python work and no gathered copy;
3. optionally runs the dense network on the result right away (optimistic: on a warm cache it is
   the answer, and it is queued before the sync, so the device never waits for the host),
4. reads, in ONE host sync, the request's device-side validity and whether each table missed;
5. commits the statistics and LRU/LFU state of the all-hit tables
   (:meth:`EmbeddingCache.commit_hits`), and for each table that missed falls back to the
   parameter-server path (:meth:`EmbeddingCache.query`: lookup of the unique keys, misses read
   from the tiers below and inserted, hit-rate threshold, statistics), pools its answer and
   re-runs the dense network.

Tables without a usable cache (disabled, or on another device) are pooled through the session's
``lookup`` function, as the reference does. The plain-PyTorch twin is
:func:`terarec.inference.reference_pool.pool_reference`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch

from terarec.inference.device_csr import DeviceCsr
from terarec.inference.reference_pool import LookupFn, lookup_unique
from terarec.inference.tiers import EmbeddingCache

CacheOf = Callable[[int], "EmbeddingCache | None"]
Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def pool_vectors(vectors: torch.Tensor, offsets: torch.Tensor, mode: str) -> torch.Tensor:
    """``embedding_bag`` of per-key ``vectors`` ``(n, dim)`` over bags ``offsets``."""
    idx = torch.arange(vectors.shape[0], device=vectors.device)
    return torch.nn.functional.embedding_bag(idx, vectors.to(torch.float32), offsets, mode=mode,
                                             include_last_offset=True)


class DevicePooler:
    """Pools a :class:`DeviceCsr` from the device caches (see the module docstring).

    Args:
        specs: per table ``table``, ``slot_num``, ``dim``, ``combiner`` (graph order).
        lookup: ``lookup(table_id, unique keys) -> (n, dim)``, for tables without a cache.
        cache_of: ``cache_of(table_id)`` -> the table's :class:`EmbeddingCache` or ``None``.
        device: the session's device.
    """

    def __init__(self, specs: list[dict[str, Any]], lookup: LookupFn, cache_of: CacheOf | None,
                 device: torch.device) -> None:
        self.specs = specs
        self.lookup = lookup
        self.cache_of = cache_of
        self.device = torch.device(device)
        self.syncs = 0  # host syncs of the last call (tests and benchmarks read it)

    def _cache(self, t: int) -> EmbeddingCache | None:
        cache = self.cache_of(t) if self.cache_of is not None else None
        if not isinstance(cache, EmbeddingCache) or cache.capacity == 0 or \
                cache.device != self.device:
            return None
        return cache

    def run(self, csr: DeviceCsr, forward: Forward | None = None
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Pooled ``{table: (B, slot_num, dim)}`` and ``forward(pooled)`` (when given)."""
        caches = [self._cache(t) for t in range(len(self.specs))]
        b = csr.batch_size
        with ExitStack() as locks:
            for cache in caches:
                if cache is not None:
                    locks.enter_context(cache.lock)
            pooled: dict[str, torch.Tensor] = {}
            probes: list[torch.Tensor | None] = []
            missed: list[torch.Tensor] = []
            for t, (spec, cache) in enumerate(zip(self.specs, caches)):
                keys, off = csr.table_keys(t), csr.offsets[t]
                mode, dim = spec.get("combiner", "sum"), int(spec["dim"])
                slot = None
                if keys.numel() == 0:
                    flat = torch.zeros((b * int(spec["slot_num"]), dim), device=self.device)
                elif cache is None:
                    flat = pool_vectors(lookup_unique(self.lookup, t, spec, keys, self.device),
                                        off, mode)
                else:
                    slot, hit = cache.probe(keys)
                    flat = cache.pool_slots(slot, off, mode)
                    missed.append(~hit.all())
                probes.append(slot)
                pooled[spec["table"]] = flat.reshape(b, -1, dim)
            out = forward(pooled) if forward is not None else None
            flags = torch.cat([csr.valid.reshape(-1), torch.stack(missed)]) if missed \
                else csr.valid.reshape(-1)
            host = flags.tolist()  # the one host sync of a warm batch
            self.syncs = 1
            csr.raise_invalid(host[:len(self.specs)])
            miss_iter = iter(host[len(self.specs):])
            refill = []
            for t, slot in enumerate(probes):
                if slot is None:
                    continue
                cache = caches[t]
                assert cache is not None  # noqa: S101 - a probe implies a cache
                if next(miss_iter):
                    refill.append(t)
                else:
                    cache.commit_hits(slot)
            for t in refill:
                spec, cache = self.specs[t], caches[t]
                assert cache is not None  # noqa: S101
                vec = cache.query(csr.table_keys(t))
                flat = pool_vectors(vec, csr.offsets[t], spec.get("combiner", "sum"))
                pooled[spec["table"]] = flat.reshape(b, -1, int(spec["dim"]))
            if refill:
                self.syncs += 1
                if forward is not None:
                    out = forward(pooled)
        return pooled, out

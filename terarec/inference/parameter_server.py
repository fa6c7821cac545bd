"""The hierarchical parameter server (HugeCTR's HPS): per-table stacks of storage tiers.

Owns the lookup order GPU/device embedding cache -> volatile DB (host memory or Redis) ->
persistent DB (RocksDB) -> ``default_value_for_each_table``, the fill of upper tiers on a miss,
and the loading of HugeCTR sparse model folders into the tiers at startup. Each tier keeps
itself within its size (cache slots, ``overflow_margin``). Tier construction goes through the
``DatabaseType_t``-keyed registry in :mod:`terarec.inference.tiers`.

Upper tiers are always filled on a miss (HugeCTR's ``cache_missed_embeddings`` is accepted and
treated as ``True``); rows found nowhere get the table's default value and are not cached.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np
import torch

from terarec.enums import DatabaseType_t
from terarec.errors import ConfigError
from terarec.inference.model_files import iter_chunks, read_sparse_model
from terarec.inference.params import InferenceParams, ParameterServerConfig
from terarec.inference.tiers import EmbeddingCache, EmbeddingTier, HostMemoryTier, make_tier
from terarec.inference.tiers.types import UNBOUNDED, as_keys


def device_for(device_id: int) -> torch.device:
    """``cuda:<id>`` when CUDA is present, the CPU otherwise."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(device_id) % torch.cuda.device_count())
    return torch.device("cpu")


class TableStack(EmbeddingTier):
    """Volatile -> persistent -> default value for one table; the source of its caches."""

    def __init__(self, name: str, dim: int, default_value: float,
                 volatile: EmbeddingTier | None, persistent: EmbeddingTier | None) -> None:
        self.name = name
        self.dim = int(dim)
        self.default_value = float(default_value)
        self.volatile = volatile
        self.persistent = persistent
        self.rows = 0  # rows in the sparse model file(s)

    @property
    def tiers(self) -> list[EmbeddingTier]:
        return [t for t in (self.volatile, self.persistent) if t is not None]

    @property
    def capacity(self) -> int:
        return max((t.capacity for t in self.tiers), default=UNBOUNDED)

    def lookup(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``keys`` (default value where no tier has them) and the found mask."""
        keys = as_keys(keys)
        out = np.full((keys.shape[0], self.dim), self.default_value, np.float32)
        found = np.zeros(keys.shape[0], bool)
        todo = np.arange(keys.shape[0])
        above: list[EmbeddingTier] = []
        for tier in self.tiers:
            if todo.size == 0:
                break
            vec, hit = tier.lookup(keys[todo])
            if hit.any():
                rows = todo[hit]
                out[rows] = vec[hit]
                found[rows] = True
                for upper in above:  # fill the tiers above the one that answered
                    upper.insert(keys[rows], vec[hit])
            todo = todo[~hit]
            above.append(tier)
        return out, found

    def insert(self, keys: Any, vectors: Any) -> None:
        for t in self.tiers:
            if not getattr(t, "read_only", False):
                t.insert(keys, vectors)

    def evict(self, keys: Any) -> int:
        return max((t.evict(keys) for t in self.tiers if not getattr(t, "read_only", False)),
                   default=0)

    def size(self) -> int:
        return max((t.size() for t in self.tiers), default=0)

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tiers[-1].dump()


class HPS:
    """``hugectr.inference.HPS``: serves every model of a :class:`ParameterServerConfig`.

    Args:
        ps_config_or_json_path: a ``ParameterServerConfig`` or the path of a ``ps.json``.

    Example:
        >>> hps = HPS("ps.json")                                  # doctest: +SKIP
        >>> hps.lookup(np.array([1, 2, 3]), "wdl", 0).shape       # doctest: +SKIP
        (3, 16)
    """

    def __init__(self, ps_config_or_json_path: ParameterServerConfig | str | os.PathLike[str]
                 ) -> None:
        if not isinstance(ps_config_or_json_path, ParameterServerConfig):
            from terarec.inference.ps_json import parse_ps_json

            ps_config_or_json_path = parse_ps_json(ps_config_or_json_path)
        self.config = ps_config_or_json_path
        self.config.update_source.check_available()
        self._tables: dict[str, list[TableStack]] = {}
        self._caches: dict[tuple[str, int, int], EmbeddingCache | None] = {}
        self._cache_pct: dict[tuple[str, int], tuple[bool, float]] = {}
        self._lock = threading.Lock()
        for params in self.config.inference_params_array:
            self._tables[params.model_name] = self._build_model(params)

    # ---- construction ----------------------------------------------------------------------
    def _dims(self, params: InferenceParams) -> list[int]:
        dims = self.config.embedding_vec_size.get(params.model_name) or \
            params.embedding_vecsize_per_table
        return [int(params.per_table(list(dims), i, "embedding_vecsize_per_table"))
                for i in range(len(params.sparse_model_files))]

    def _build_model(self, params: InferenceParams) -> list[TableStack]:
        vdb, pdb = self.config.volatile_db, self.config.persistent_db
        names = self.config.emb_table_name.get(params.model_name) or params.table_names()
        stacks = []
        for i, (path, dim) in enumerate(zip(params.sparse_model_files, self._dims(params))):
            name = names[i] if i < len(names) and names[i] else f"sparse_embedding{i + 1}"
            prefix = f"hps_et.{params.model_name}.{name}"
            volatile = None if vdb.type is DatabaseType_t.disabled else make_tier(
                vdb.type.name, vdb, prefix, dim)
            persistent = None if pdb.backend is DatabaseType_t.disabled else make_tier(
                pdb.backend.name, pdb, prefix, dim)
            if volatile is None and persistent is None:
                volatile = HostMemoryTier(prefix, dim)
            default = params.per_table(list(params.default_value_for_each_table), i,
                                       "default_value_for_each_table")
            stack = TableStack(name, dim, default, volatile, persistent)
            self._load_table(stack, path, params)
            stacks.append(stack)
        return stacks

    def _load_table(self, stack: TableStack, path: str, params: InferenceParams) -> None:
        keys, vectors = read_sparse_model(path, stack.dim)
        stack.rows = int(keys.shape[0])
        vdb, pdb = self.config.volatile_db, self.config.persistent_db
        p = stack.persistent
        if p is not None and pdb.initialize_after_startup and not pdb.read_only:
            for k, v in iter_chunks(keys, vectors):
                p.load(k, v)
        if stack.volatile is not None and (vdb.initialize_after_startup or p is None):
            rate = vdb.initial_cache_rate if p is not None else 1.0
            n = int(math.ceil(stack.rows * min(max(rate, 0.0), 1.0)))
            for k, v in iter_chunks(keys[:n], vectors[:n]):
                stack.volatile.load(k, v)

    # ---- caches ----------------------------------------------------------------------------
    def configure_cache(self, model_name: str, device_id: int, enabled: bool,
                        cache_size_percentage: float) -> None:
        """Set (or change) the cache of ``model_name`` on ``device_id`` before first use."""
        with self._lock:
            self._cache_pct[(model_name, device_id)] = (bool(enabled), float(cache_size_percentage))
            for key in [k for k in self._caches if k[0] == model_name and k[2] == device_id]:
                cache = self._caches.pop(key)
                if cache is not None:
                    cache.close()

    def cache(self, model_name: str, table_id: int, device_id: int = 0) -> EmbeddingCache | None:
        """The device cache of a table (created on first use; ``None`` when disabled)."""
        key = (model_name, int(table_id), int(device_id))
        with self._lock:
            if key in self._caches:
                return self._caches[key]
            params = self.config.model(model_name)
            enabled, pct = self._cache_pct.get(
                (model_name, device_id),
                (params.use_gpu_embedding_cache, params.cache_size_percentage))
            stack = self.table(model_name, table_id)
            capacity = int(math.ceil(pct * stack.rows)) if enabled else 0
            cache = None
            if capacity > 0:
                cache = EmbeddingCache(stack.name, stack.dim, capacity, device_for(device_id),
                                       source=stack, hit_rate_threshold=params.hit_rate_threshold)
                if params.init_ec:
                    keys, vecs = read_sparse_model(params.sparse_model_files[table_id], stack.dim)
                    cache.insert(np.array(keys[:capacity]), np.array(vecs[:capacity]))
            self._caches[key] = cache
            return cache

    # ---- lookups ---------------------------------------------------------------------------
    def table(self, model_name: str, table_id: int) -> TableStack:
        if model_name not in self._tables:
            raise ConfigError("model_name", f"one of {sorted(self._tables)}", model_name)
        tables = self._tables[model_name]
        if not 0 <= int(table_id) < len(tables):
            raise ConfigError(f"table_id of model {model_name!r}",
                              f"0..{len(tables) - 1}", table_id)
        return tables[int(table_id)]

    def num_tables(self, model_name: str) -> int:
        return len(self._tables[model_name])

    def lookup_tensor(self, keys: Any, model_name: str, table_id: int, device_id: int = 0
                      ) -> torch.Tensor:
        """Vectors of ``keys`` as a float32 tensor on the device of ``device_id``."""
        cache = self.cache(model_name, table_id, device_id)
        if cache is not None:
            return cache.query(keys)
        vec, _ = self.table(model_name, table_id).lookup(keys)
        return torch.from_numpy(vec).to(device_for(device_id))

    def lookup(self, h_keys: Any, model_name: str, table_id: int, device_id: int = 0
               ) -> np.ndarray:
        """``HPS.lookup``: float32 array ``(num_keys, embedding_vec_size)``."""
        return self.lookup_tensor(h_keys, model_name, table_id, device_id).cpu().numpy()

    def lookup_fromdlpack(self, keys: Any, out_tensor: Any, model_name: str, table_id: int,
                          device_id: int = 0) -> None:
        """Write the vectors of DLPack ``keys`` into the DLPack ``out_tensor``."""
        k = torch.from_dlpack(keys)
        out = torch.from_dlpack(out_tensor)
        out.copy_(self.lookup_tensor(k, model_name, table_id, device_id).reshape(out.shape))

    def refresh_embedding_cache(self, model_name: str, device_id: int = 0) -> None:
        for (m, _t, d), cache in list(self._caches.items()):
            if m == model_name and d == device_id and cache is not None:
                params = self.config.model(model_name)
                cache.refresh(params.cache_refresh_percentage_per_iteration or 1.0)

    def cache_stats(self, model_name: str) -> dict[str, dict[str, float]]:
        return {f"{t}@{d}": c.stats() for (m, t, d), c in self._caches.items()
                if m == model_name and c is not None}

    def close(self) -> None:
        for cache in self._caches.values():
            if cache is not None:
                cache.close()
        for stacks in self._tables.values():
            for s in stacks:
                for t in s.tiers:
                    t.close()


HierarchicalParameterServer = HPS

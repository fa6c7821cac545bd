"""HugeCTR's Embedding Training Cache (ETC, HugeCTR <= 23.08): ``CreateETC``, ``CreateHMemCache``,
``Model(..., etc)``, ``model.get_embedding_training_cache().update(keyset)``.

Owns the ETC's Python surface and its pass logic. A pass is the training of one file list of
``DataReaderParams.source``; before it, :meth:`EmbeddingTrainingCache.update` writes the
training tables' rows back to their parameter servers (:mod:`terarec.compat.etc_store`:
``Staged`` = host memory, ``Cached`` = SSD behind a host cache), empties the tables and loads
the rows of the pass's keyset, as HugeCTR does. So a training table only needs room for one
pass's keys (its ``workspace_size_per_gpu_in_mb`` / vocabulary), while the parameter server
holds the whole table. Unlike HugeCTR, a key that the keyset missed (or an evaluation key) is
fetched from the parameter server on its first lookup instead of starting from fresh values,
so ETC training equals training without ETC on the same batches (exactly, except for
``Update_t.Global`` with optimizers whose zero-gradient step changes rows, e.g. Adam: rows
outside the pass are not swept, as in HugeCTR). The price is one look-up of each step's keys
in the training tables (a host synchronisation per table and step) in ETC mode.
``update(keyset_file)`` loads one keyset into every table, ``update([files])`` one file per
table (HugeCTR's two overloads).

``save_params_to_files`` writes the sparse weights and optimizer states in place into the
``sparse_models`` folders (atomically); a folder that exists at ``compile()`` is loaded.
Keyset files (§15.6): flat native-endian keys, uint32 (``i64_input_key=False``) or int64.
Single process only (a job with several ranks raises :class:`NotSupportedError`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from terarec.compat._check import check_float, check_int
from terarec.compat.etc_store import (
    CachedStore,
    FolderOptimizer,
    PassBlocks,
    RowLayout,
    Rows,
    StagedStore,
    Store,
    pack,
    read_model_folder,
    scratch_folder,
    unpack,
    write_model_folder,
)
from terarec.embedding.table_io import LAST_STEP_KEY
from terarec.enums import TrainPSType_t, coerce
from terarec.errors import ConfigError, DataError, NotSupportedError
from terarec.utils.paths import check_local_path

#: fit's snapshot interval under ETC: HugeCTR ignores ``snapshot`` with ETC.
_NO_SNAPSHOT = 2**62


# ------------------------------------------------------------------------------ parameters
@dataclass
class HMemCacheConfig:
    """``hugectr.HMemCacheConfig``: the host cache of a ``Cached`` parameter server."""

    num_blocks: int
    target_hit_rate: float
    max_num_evict: int

    def __post_init__(self) -> None:
        f = "CreateHMemCache"
        self.num_blocks = check_int(f, "num_blocks", self.num_blocks, 1)
        self.target_hit_rate = check_float(f, "target_hit_rate", self.target_hit_rate, 0.0)
        if self.target_hit_rate > 1.0:
            raise ConfigError(f"{f}(target_hit_rate=...)", "a hit rate in [0, 1]",
                              self.target_hit_rate)
        self.max_num_evict = check_int(f, "max_num_evict", self.max_num_evict, 0)


def CreateHMemCache(num_blocks: int, target_hit_rate: float,  # noqa: N802 - HugeCTR's name
                    max_num_evict: int) -> HMemCacheConfig:
    """``hugectr.CreateHMemCache(num_blocks, target_hit_rate, max_num_evict)``."""
    return HMemCacheConfig(num_blocks, target_hit_rate, max_num_evict)


@dataclass
class EmbeddingTrainingCacheParams:
    """``hugectr.EmbeddingTrainingCacheParams`` (the result of ``CreateETC``; constructed
    without arguments it means "no ETC", as HugeCTR's default)."""

    ps_types: list[Any] = field(default_factory=list)
    sparse_models: list[str] = field(default_factory=list)
    local_paths: list[str] = field(default_factory=list)
    hmem_cache_configs: list[HMemCacheConfig] = field(default_factory=list)
    use_embedding_training_cache: bool = False

    @property
    def hcache_configs(self) -> list[HMemCacheConfig]:
        return self.hmem_cache_configs


def _str_list(func: str, name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (str, os.PathLike)) for v in value):
        raise ConfigError(f"{func}({name}=...)", "a list of paths", value)
    return [os.fspath(v) for v in value]


def CreateETC(ps_types: list[Any],  # noqa: N802 - HugeCTR's name
              sparse_models: list[str] | None = None, local_paths: list[str] | None = None,
              hmem_cache_configs: list[HMemCacheConfig] | None = None, *,
              hcache_configs: list[HMemCacheConfig] | None = None,
              ) -> EmbeddingTrainingCacheParams:
    """``hugectr.CreateETC(ps_types, sparse_models=[], local_paths=[], hmem_cache_configs=[])``.

    One ``ps_types`` entry and one ``sparse_models`` folder per ``SparseEmbedding`` (checked
    when the model's tables are added / compiled); ``local_paths``: one folder per process
    (terarec: the first one is used), needed with ``Cached``; ``hmem_cache_configs`` (the docs'
    ``hcache_configs``): one config for every ``Cached`` table or one per ``Cached`` table.
    """
    f = "CreateETC"
    if hcache_configs is not None:
        if hmem_cache_configs is not None:
            raise ConfigError(f"{f}(hmem_cache_configs=..., hcache_configs=...)",
                              "one of the two names for the same argument", "both")
        hmem_cache_configs = hcache_configs
    if isinstance(ps_types, (str, TrainPSType_t)) or not isinstance(ps_types, (list, tuple)) \
            or not ps_types:
        raise ConfigError(f"{f}(ps_types=...)", "a non-empty list of TrainPSType_t "
                          "(Staged / Cached), one per SparseEmbedding", ps_types)
    types = [coerce(TrainPSType_t, t, f"{f}(ps_types[{i}])") for i, t in enumerate(ps_types)]
    models = _str_list(f, "sparse_models", sparse_models or [])
    paths = _str_list(f, "local_paths", local_paths or [])
    for name, values in (("sparse_models", models), ("local_paths", paths)):
        for i, path in enumerate(values):
            check_local_path(path, f"{f}({name}[{i}])")
    configs = list(hmem_cache_configs or [])
    for i, c in enumerate(configs):
        if not isinstance(c, HMemCacheConfig):
            raise ConfigError(f"{f}(hmem_cache_configs[{i}])",
                              "the result of CreateHMemCache(...)", c)
    n_cached = sum(t is TrainPSType_t.Cached for t in types)
    if n_cached:
        if not paths:
            raise ConfigError(f"{f}(local_paths=...)", f"a folder for the {n_cached} Cached "
                              "parameter server(s)", paths)
        if len(configs) not in (1, n_cached):
            raise ConfigError(f"{f}(hmem_cache_configs=...)", f"1 or {n_cached} configs (one "
                              f"per Cached entry of ps_types)", f"{len(configs)} configs")
    return EmbeddingTrainingCacheParams(types, models, paths, configs, True)


def check_etc_params(value: Any) -> EmbeddingTrainingCacheParams | None:
    """``Model``'s 4th argument: None (or HugeCTR's default params) means no ETC."""
    if value is None:
        return None
    if not isinstance(value, EmbeddingTrainingCacheParams):
        raise ConfigError("Model(etc_params=...)", "the result of CreateETC(...)", value)
    return value if value.use_embedding_training_cache else None


def check_table_count(params: EmbeddingTrainingCacheParams, n_tables: int, final: bool) -> None:
    """One ``ps_types`` entry and one ``sparse_models`` folder per SparseEmbedding."""
    for name, n in (("ps_types", len(params.ps_types)),
                    ("sparse_models", len(params.sparse_models))):
        if n_tables > n or (final and n_tables != n):
            raise ConfigError(f"CreateETC({name}=...)", f"one entry per SparseEmbedding of the "
                              f"model ({n_tables} {'in the model' if final else 'added so far'})",
                              f"{n} entries")


# ------------------------------------------------------------------------------ keysets
def check_keyset_file(path: Any, i64_input_key: bool) -> None:
    """A keyset file exists and holds whole keys (checked without reading it)."""
    item = 8 if i64_input_key else 4
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise DataError(str(path), "keyset file not found")
    size = os.path.getsize(path)
    if size % item:
        raise DataError(str(path), f"keyset file size {size} bytes is not a multiple of the "
                        f"key size {item} bytes ({'int64' if i64_input_key else 'uint32'} keys, "
                        f"i64_input_key={bool(i64_input_key)})")


def read_keyset(path: Any, i64_input_key: bool) -> np.ndarray:
    """The unique keys of a keyset file as int64 (native-endian uint32 keys when not
    ``i64_input_key``, else int64)."""
    check_keyset_file(path, i64_input_key)
    dtype = np.dtype("=i8" if i64_input_key else "=u4")
    return np.unique(np.fromfile(path, dtype=dtype).astype(np.int64))


def as_path_list(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.fspath(v) for v in value]
    raise ConfigError(where, "a path or a list of paths", value)


# ------------------------------------------------------------------------------ table rows
def table_rows(table: Any) -> Rows:
    """Every row of a training table with its slot and optimizer state."""
    keys, vectors, _ = table.export()
    slots = table.row_slots[table.index.rows()].cpu().numpy().astype(np.int64)
    opt = table.optimizer
    state = table.optimizer_state()
    states = [np.ascontiguousarray(state[n][1], dtype=np.float32) for n in opt.state_names]
    last = np.asarray(state[LAST_STEP_KEY][1], np.int64) if opt.lazy else None
    return Rows(np.asarray(keys, np.int64), vectors, states, slots, last)


def load_rows(table: Any, rows: Rows) -> None:
    """Put rows (vector, slot, optimizer state) into a training table."""
    if not len(rows):
        return
    table.load(rows.keys, rows.vectors, rows.slots)
    opt = table.optimizer
    state = {n: (rows.keys, s) for n, s in zip(opt.state_names, rows.states)}
    if opt.lazy and rows.last_step is not None:
        state[LAST_STEP_KEY] = (rows.keys, rows.last_step)
    table.load_optimizer_state(state)


def layout_of(table: Any) -> RowLayout:
    opt = table.optimizer
    return RowLayout(table.config.dim, len(opt.state_names), bool(opt.lazy))


def folder_optimizer(table: Any) -> FolderOptimizer:
    opt = table.optimizer
    return FolderOptimizer(opt.config.type, opt.config.update_type, tuple(opt.state_names),
                           tuple(float(v) for v in opt.rule.initial_values(opt.config)),
                           bool(opt.lazy))


class _StoreView:
    """A parameter server seen as a table by :func:`terarec.compat.incremental.incremental_model`."""

    def __init__(self, store: Store, layout: RowLayout, localized: bool) -> None:
        self.store, self.layout, self.localized = store, layout, localized

    def export(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        keys, records = self.store.dump()
        rows = unpack(self.layout, keys, records)
        return rows.keys, rows.vectors, rows.slots.astype(np.uint64) if self.localized else None


# ------------------------------------------------------------------------------ the cache
class EmbeddingTrainingCache:
    """``hugectr.EmbeddingTrainingCache`` (``model.get_embedding_training_cache()``)."""

    def __init__(self, model: Any, params: EmbeddingTrainingCacheParams) -> None:
        self._model = model
        self.params = params
        self.stores: dict[str, Store] = {}
        self.layouts: dict[str, RowLayout] = {}

    # -- setup (Model.compile) -------------------------------------------------------------
    def attach(self) -> None:
        """Build one parameter server per table; load the ``sparse_models`` folders present."""
        from terarec.embedding.table import EmbeddingTable

        model = self._model
        if model._dist is not None:
            raise NotSupportedError(
                "Embedding Training Cache (CreateETC) with several processes: terarec runs ETC "
                "in a single process; train with one GPU / process, or drop the ETC and let the "
                "sharded tables hold the vocabulary")
        tables = model._engine().tables
        check_table_count(self.params, len(tables), final=True)
        cached = [i for i, t in enumerate(self.params.ps_types) if t is TrainPSType_t.Cached]
        folder = scratch_folder(self.params.local_paths[0]) if cached else ""
        configs = self.params.hmem_cache_configs
        for i, (name, table) in enumerate(tables.items()):
            if type(table) is not EmbeddingTable:
                raise NotSupportedError(f"Embedding Training Cache for table {name!r} of type "
                                        f"{type(table).__name__}: only single-device tables")
            layout = layout_of(table)
            self.layouts[name] = layout
            if self.params.ps_types[i] is TrainPSType_t.Cached:
                c = configs[0] if len(configs) == 1 else configs[cached.index(i)]
                blocks = PassBlocks(c.num_blocks, c.target_hit_rate, c.max_num_evict)
                self.stores[name] = CachedStore(name, layout, folder, blocks)
            else:
                self.stores[name] = StagedStore(name, layout)
            path = self.params.sparse_models[i]
            if os.path.isdir(path):
                rows, step = read_model_folder(path, layout, folder_optimizer(table))
                self.stores[name].push(rows.keys, pack(layout, rows))
                if step is not None:
                    table.optimizer.t = step
            elif os.path.exists(path):
                raise ConfigError(f"CreateETC(sparse_models[{i}])", "a sparse model folder "
                                  "(or a path where it will be created)", path)

    # -- HugeCTR's EmbeddingTrainingCache --------------------------------------------------
    def update(self, keyset_file: Any = None, *, keyset_file_list: Any = None) -> None:
        """Prepare the tables for the next pass: write their rows back to the parameter
        servers, empty them, load the rows of the keyset(s). ``keyset_file``: one file for
        every table; ``keyset_file_list``: one file per table (HugeCTR's two overloads; a
        list passed positionally is ``keyset_file_list``)."""
        if keyset_file_list is None and isinstance(keyset_file, (list, tuple)):
            keyset_file, keyset_file_list = None, keyset_file
        names = list(self._tables())
        if keyset_file_list is not None:
            files = as_path_list(keyset_file_list,
                                 "EmbeddingTrainingCache.update(keyset_file_list=...)")
            if len(files) != len(names):
                raise ConfigError("EmbeddingTrainingCache.update(keyset_file_list=...)",
                                  f"one keyset file per embedding table ({len(names)}: {names})",
                                  f"{len(files)} files")
        elif isinstance(keyset_file, (str, os.PathLike)):
            files = [os.fspath(keyset_file)] * len(names)
        else:
            raise ConfigError("EmbeddingTrainingCache.update(keyset_file=...)",
                              "a keyset file path or a list of them", keyset_file)
        i64 = bool(self._model.solver.i64_input_key)
        keysets: dict[str, np.ndarray] = {}
        for f in dict.fromkeys(files):
            keysets[f] = read_keyset(f, i64)
        self.dump()
        self._reset_tables()
        tables = self._tables()
        for name, f in zip(names, files):
            keys = keysets[f]
            records, found = self.stores[name].pull(keys, pass_level=True)
            load_rows(tables[name], unpack(self.layouts[name], keys[found], records[found]))

    def dump(self) -> None:
        """Write every training table's rows to its parameter server."""
        for name, table in self._tables().items():
            rows = table_rows(table)
            self.stores[name].push(rows.keys, pack(self.layouts[name], rows))

    def fetch_missing(self, batch: Any) -> None:
        """Load the rows of ``batch``'s keys that the tables lack and the parameter servers
        hold (called before every step in ETC mode)."""
        engine = self._model._engine()
        for name, table in engine.tables.items():
            store = self.stores[name]
            sparse = batch.sparse.get(engine.table_inputs[name])
            if store.empty or sparse is None or sparse.keys.numel() == 0:
                continue
            keys = torch.unique(sparse.keys.reshape(-1).to(torch.int64))
            missing = keys[table.index.lookup(keys) < 0].cpu().numpy()
            if missing.size:
                records, found = store.pull(missing, pass_level=False)
                if found.any():
                    load_rows(table, unpack(self.layouts[name], missing[found], records[found]))

    # -- Model hooks -------------------------------------------------------------------------
    def store_views(self) -> dict[str, _StoreView]:
        """The parameter servers (after :meth:`dump`) as exportable tables."""
        self.dump()
        return {name: _StoreView(self.stores[name], self.layouts[name],
                                 table.config.is_localized)
                for name, table in self._tables().items()}

    def save_sparse_models(self) -> None:
        """Write every table in place into its ``sparse_models`` folder (atomically)."""
        self.dump()
        for i, (name, table) in enumerate(self._tables().items()):
            keys, records = self.stores[name].dump()
            rows = unpack(self.layouts[name], keys, records)
            write_model_folder(self.params.sparse_models[i], rows, folder_optimizer(table),
                               table.optimizer.t, table.config.is_localized)

    def fit(self, opts: Any, sources: Iterable[tuple[str, str]]) -> None:
        """HugeCTR's ETC ``fit``: per (file list, keyset), in order, ``update(keyset)`` then
        ``num_epochs`` over that file list; ``snapshot`` is ignored (as HugeCTR)."""
        from terarec.training.fit import run_fit
        from terarec.training.logging import log

        model = self._model
        if model.solver.repeat_dataset:
            raise ConfigError("Model.fit with an Embedding Training Cache", "CreateSolver("
                              "repeat_dataset=False): ETC trains each file list of source for "
                              "num_epochs, in order", "repeat_dataset=True")
        if opts.num_epochs <= 0:
            raise ConfigError("fit(num_epochs=...)", "num_epochs > 0 with an Embedding Training "
                              "Cache", opts.num_epochs)
        passes = list(sources)
        i64 = bool(model.solver.i64_input_key)
        for _, keyset in passes:
            check_keyset_file(keyset, i64)
        for source, keyset in passes:
            log(f"Preparing embedding table for next pass: {source} (keyset {keyset})",
                model.rank)
            self.update(keyset)
            model.train_reader.set_source(source)
            run_fit(model, replace(opts, snapshot=_NO_SNAPSHOT))

    def _tables(self) -> dict[str, Any]:
        return dict(self._model._engine().tables.items())

    def _reset_tables(self) -> None:
        """Replace every training table with an empty one of the same config, seed, step
        counter and settings (HugeCTR's embedding ``reset()`` between passes)."""
        from terarec.embedding.table import EmbeddingTable

        engine = self._model._engine()
        for name, old in list(engine.tables.items()):
            # a private generator: the seed is overwritten, torch's global RNG stays untouched
            new = EmbeddingTable(old.config, device=old.weight.device,
                                 generator=torch.Generator().manual_seed(0), index=old.index_kind)
            new.seed = old.seed
            new.frozen = old.frozen
            new.optimizer.t = old.optimizer.t
            new.optimizer.lr = old.optimizer.lr
            new.optimizer.scaler = old.optimizer.scaler
            new.train(old.training)
            engine.tables[name] = new
        engine.reset_cuda_graph()


def etc_sources(source: Any, keyset: Any, where: str) -> list[tuple[str, str]]:
    """``(file list, keyset)`` pairs of an ETC ``source`` / ``keyset``, lengths checked."""
    sources = as_path_list(source, f"{where}(source=...)")
    keysets = as_path_list(keyset, f"{where}(keyset=...)")
    if not sources:
        raise ConfigError(f"{where}(source=...)", "one or more file lists", source)
    if len(keysets) != len(sources):
        raise ConfigError(f"{where}(keyset=...)", f"one keyset file per file list of source "
                          f"({len(sources)}) with an Embedding Training Cache",
                          f"{len(keysets)} keyset files")
    return list(zip(sources, keysets))

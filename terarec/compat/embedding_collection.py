"""HugeCTR's embedding-collection API ("3G" embedding, reference §8), mapped onto terarec.

Owns ``EmbeddingTableConfig``, ``EmbeddingCollectionConfig`` (``embedding_lookup``, ``shard``)
and their translation, done by ``Model.add(ebc_config)``, into what the rest of terarec already
runs: one ``SparseEmbedding`` graph spec per lookup (the table of that lookup), the
Reshape / Concat layers of the batch-major list form, and one placement per table for the
sharded collection (:mod:`terarec.distributed`).

Mapping:

* table ``max_vocabulary_size > 0`` (HugeCTR "static": keys are row numbers ``< size``):
  a direct-mapped table (``LocalizedSlotSparseEmbeddingOneHot`` with
  ``slot_size_array=[size]``: no hash, rows addressed by key) when the reader hands the keys
  as they are (``direct_keys``: no ``slot_size_array`` in ``DataReaderParams``); when the
  reader adds per-slot offsets to the keys, a hash table of ``size`` rows
  (``DistributedSlotSparseEmbeddingHash``). ``-1`` ("dynamic"): a hash table that grows up to
  :data:`DYNAMIC_VOCABULARY` rows.
* ``embedding_lookup(table, bottom, top, combiner)``: output ``(batch, 1, ev_size)`` named
  ``top``; combiner ``"sum"``, ``"average"`` (``"mean"`` accepted as its alias) or
  ``"concat"``. HugeCTR's ``concat`` does not pool: a lookup's output is
  ``(batch, 1, max_hotness * ev_size)``, the vectors of a sample's keys side by side in input
  order, zero past its last key (HugeCTR's embedding-collection code sizes every ``Concat``
  lookup ``max_hotness * ev_size``; reference §8.2 lists the combiner). terarec's tables pool
  (sum / mean), so ``"concat"`` is taken for one-hot inputs (``max_hotness == 1``, where it is
  ``"sum"``: one vector or zeros) and refused for a multi-hot input by ``Model.add`` with a
  :class:`~terarec.errors.NotSupportedError` stating that rule.
* list form ``embedding_lookup([tables], [bottoms], top, [combiners])``: lookups named
  ``top + str(i)``, reshaped and concatenated into ``(batch, sum(ev_size))`` named ``top``.
* ``shard(shard_matrix, shard_strategy)``: ``"dp"`` -> ``replicated`` (the table must be on
  every GPU); ``"mp"`` -> ``table_wise`` on the one GPU listing it, ``row_wise`` over the
  GPUs listing it; ``("name", k)`` -> ``column_wise`` over the ``k`` GPUs listing it.
  On one process the plan is not used (every table is whole on the device), so a script
  written for N GPUs also runs, with the same numbers, on one.

A table looked up by several lookups (HugeCTR allows it; the lookups may read different inputs
with different combiners) is one set of rows: every lookup of it is a view
(:mod:`terarec.compat.shared_tables`) of one table, and one optimizer step per training step
applies the sum of the gradients of all its lookups. Each lookup's ``EmbeddingSpec.extra``
records ``collection`` (add order of the collection in the model), ``table`` (the HugeCTR table
name), ``table_id`` (its index among the collection's tables, first-lookup order) and
``key_offset`` (what the reader adds to the input's keys: ``sum(slot_size_array[:slot])``, 0
without ``slot_size_array``); ``Model.embedding_dump`` / ``embedding_load``
(:mod:`terarec.compat.embedding_dump`) use them. Sharing needs the table whole on one process:
on several ranks a shared table raises :class:`~terarec.errors.NotSupportedError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from terarec.compat._check import check_bool, check_int, check_str
from terarec.compat.layers import DenseLayer
from terarec.compat.optimizer import OptParamsPy
from terarec.data.schema import DataSchema
from terarec.embedding.plan import TablePlacement
from terarec.enums import CommunicationStrategy, CompressionStrategy, Layer_t, coerce
from terarec.errors import ConfigError, NotSupportedError
from terarec.graph.spec import EmbeddingSpec, LayerSpec

#: Row capacity of a dynamic (``max_vocabulary_size=-1``) table; rows are allocated as keys
#: arrive, this only bounds them.
DYNAMIC_VOCABULARY = 1 << 31
#: HugeCTR's combiner names -> terarec's (``"mean"`` is what HugeCTR's docs say; ``"concat"`` is
#: ``"sum"`` for the one-hot inputs it is taken for, see the module docstring).
COMBINERS = {"sum": "sum", "average": "mean", "mean": "mean", "concat": "sum"}
STATIC_TYPE = "LocalizedSlotSparseEmbeddingOneHot"
DYNAMIC_TYPE = "DistributedSlotSparseEmbeddingHash"


class EmbeddingTableConfig:
    """``hugectr.EmbeddingTableConfig(name, max_vocabulary_size, ev_size,
    opt_params_or_empty=None, init_param_or_empty=None)``.

    ``opt_params_or_empty``: a ``CreateOptimizer(...)`` result for this table (default: the
    model's optimizer). ``init_param_or_empty`` has no Python binding in HugeCTR; only ``None``
    is accepted.
    """

    def __init__(self, name: str, max_vocabulary_size: int, ev_size: int,
                 opt_params_or_empty: OptParamsPy | None = None,
                 init_param_or_empty: Any = None) -> None:
        f = "EmbeddingTableConfig"
        self.name = check_str(f, "name", name)
        self.max_vocabulary_size = check_int(f, "max_vocabulary_size", max_vocabulary_size)
        if self.max_vocabulary_size == 0 or self.max_vocabulary_size < -1:
            raise ConfigError(f"{f}({name!r}).max_vocabulary_size",
                              "a positive row count (static table) or -1 (dynamic table)",
                              max_vocabulary_size)
        self.ev_size = check_int(f, "ev_size", ev_size, 1)
        if self.ev_size > 256:
            raise ConfigError(f"{f}({name!r}).ev_size", "at most 256", ev_size)
        if opt_params_or_empty is not None and not isinstance(opt_params_or_empty, OptParamsPy):
            raise ConfigError(f"{f}({name!r}).opt_params_or_empty",
                              "None or the result of CreateOptimizer(...)", opt_params_or_empty)
        if init_param_or_empty is not None:
            raise NotSupportedError(f"{f}({name!r}).init_param_or_empty: HugeCTR has no Python "
                                    "binding for it; pass None (uniform init per table)")
        self.opt_params_or_empty = opt_params_or_empty
        self.init_param_or_empty = init_param_or_empty

    @property
    def is_static(self) -> bool:
        return self.max_vocabulary_size > 0

    def __repr__(self) -> str:
        return (f"EmbeddingTableConfig(name={self.name!r}, max_vocabulary_size="
                f"{self.max_vocabulary_size}, ev_size={self.ev_size})")


@dataclass
class _Lookup:
    table: EmbeddingTableConfig
    bottom: str
    top: str
    combiner: str


@dataclass
class CollectionGraph:
    """What ``Model.add(ebc_config)`` adds: specs, layers, and placements by table name."""

    embeddings: list[EmbeddingSpec] = field(default_factory=list)
    layers: list[LayerSpec] = field(default_factory=list)
    placements: dict[str, TablePlacement] = field(default_factory=dict)


class EmbeddingCollectionConfig:
    """``hugectr.EmbeddingCollectionConfig(use_exclusive_keys=False,
    comm_strategy=CommunicationStrategy.Uniform)``.

    ``use_exclusive_keys`` and ``comm_strategy`` are accepted and recorded: they choose
    HugeCTR kernels and communication schedules, not results (terarec routes keys its own way).
    """

    def __init__(self, use_exclusive_keys: bool = False,
                 comm_strategy: Any = CommunicationStrategy.Uniform) -> None:
        f = "EmbeddingCollectionConfig"
        self.use_exclusive_keys = check_bool(f, "use_exclusive_keys", use_exclusive_keys)
        self.comm_strategy = coerce(CommunicationStrategy, comm_strategy,
                                    f"{f}(comm_strategy=...)")
        self.lookups: list[_Lookup] = []
        self.batch_major_top: str | None = None
        self.shard_matrix: list[list[str]] | None = None
        self.shard_strategy: list[tuple[str, list[Any]]] = []
        self.compression_strategy: dict[Any, list[str]] = {}

    # ------------------------------------------------------------------ HugeCTR methods
    def embedding_lookup(self, table_config: Any, bottom_name: Any, top_name: str,
                         combiner: Any) -> None:
        """One lookup (feature-major ``(batch, 1, ev_size)`` output) or, with lists, the
        collection's only call (batch-major ``(batch, sum(ev_size))`` output)."""
        f = "EmbeddingCollectionConfig.embedding_lookup"
        top = check_str(f, "top_name", top_name)
        if self.batch_major_top is not None:
            raise ConfigError(f, "no lookup after the list form (it must be the only call)",
                              top)
        if isinstance(table_config, list):
            if self.lookups:
                raise ConfigError(f, "the list form as the first and only call",
                                  f"{len(self.lookups)} earlier lookups")
            n = len(table_config)
            if not n or not isinstance(bottom_name, list) or not isinstance(combiner, list) \
                    or len(bottom_name) != n or len(combiner) != n:
                raise ConfigError(f, "lists table_config, bottom_name, combiner of one length",
                                  (table_config, bottom_name, combiner))
            for i, (t, b, c) in enumerate(zip(table_config, bottom_name, combiner)):
                self.lookups.append(self._lookup(t, b, f"{top}{i}", c))
            self.batch_major_top = top
            return
        self.lookups.append(self._lookup(table_config, bottom_name, top, combiner))

    def shard(self, shard_matrix: list[list[str]], shard_strategy: list[tuple[str, list[Any]]],
              compression_strategy: dict[Any, list[str]] | None = None) -> None:
        """Where the tables live: ``shard_matrix[g]`` = table names on GPU ``g``;
        ``shard_strategy`` = ``[("mp" | "dp", [name | (name, k), ...]), ...]``."""
        f = "EmbeddingCollectionConfig.shard"
        if not isinstance(shard_matrix, list) or not shard_matrix or not all(
                isinstance(g, list) and all(isinstance(n, str) for n in g) for g in shard_matrix):
            raise ConfigError(f"{f}(shard_matrix=...)", "a list (one per GPU) of lists of table "
                              "names", shard_matrix)
        if not isinstance(shard_strategy, list):
            raise ConfigError(f"{f}(shard_strategy=...)", 'a list of ("mp" | "dp", [tables])',
                              shard_strategy)
        strategies = []
        for entry in shard_strategy:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2 \
                    or entry[0] not in ("mp", "dp") or not isinstance(entry[1], list):
                raise ConfigError(f"{f}(shard_strategy=...)",
                                  'entries ("mp" | "dp", [name | (name, k), ...])', entry)
            strategies.append((entry[0], list(entry[1])))
        comp = dict(compression_strategy or {})
        for key in comp:
            coerce(CompressionStrategy, key, f"{f}(compression_strategy=...)")
        self.shard_matrix = [list(g) for g in shard_matrix]
        self.shard_strategy = strategies
        self.compression_strategy = comp

    # ------------------------------------------------------------------ translation
    def _lookup(self, table: Any, bottom: Any, top: str, combiner: Any) -> _Lookup:
        f = "EmbeddingCollectionConfig.embedding_lookup"
        if not isinstance(table, EmbeddingTableConfig):
            raise ConfigError(f"{f}(table_config=...)", "an EmbeddingTableConfig", table)
        bottom = check_str(f, "bottom_name", bottom)
        if combiner not in COMBINERS:
            raise ConfigError(f"{f}(combiner=...)", '"sum", "average" or "concat"', combiner)
        return _Lookup(table, bottom, top, combiner)

    def table_names(self) -> dict[str, str]:
        """HugeCTR table name -> the name of its first lookup (the table's name in terarec)."""
        return {name: tops[0] for name, tops in self.lookups_by_table().items()}

    def lookups_by_table(self) -> dict[str, list[str]]:
        """HugeCTR table name -> the names of its lookups, in call order (tables in first-lookup
        order); one ``EmbeddingTableConfig`` object per name."""
        out: dict[str, list[str]] = {}
        configs: dict[str, EmbeddingTableConfig] = {}
        for lk in self.lookups:
            first = configs.setdefault(lk.table.name, lk.table)
            if first is not lk.table and _shape(first) != _shape(lk.table):
                raise ConfigError(f"EmbeddingCollectionConfig: table {lk.table.name!r}",
                                  f"one definition {first!r} (tables are identified by name)",
                                  repr(lk.table))
            out.setdefault(lk.table.name, []).append(lk.top)
        return out

    def to_graph(self, schema: DataSchema, world_size: int = 1, direct_keys: bool = False,
                 collection_id: int = 0, slot_size_array: list[int] | None = None,
                 ) -> CollectionGraph:
        """Graph specs and (for ``world_size > 1``) placements of this collection;
        ``direct_keys``: the reader's keys are the tables' row numbers (no slot offsets);
        ``collection_id``: this collection's index among the model's collections;
        ``slot_size_array``: the reader's (it adds per-slot key offsets)."""
        if not self.lookups:
            raise ConfigError("Model.add(EmbeddingCollectionConfig)", "at least one "
                              "embedding_lookup(...)", None)
        by_table = self.lookups_by_table()
        if world_size > 1:
            _check_unshared(by_table, world_size)
        ids = {name: i for i, name in enumerate(by_table)}
        offsets = key_offsets(schema, slot_size_array or [])
        graph = CollectionGraph()
        for lk in self.lookups:
            spec = self._spec(lk, schema, direct_keys)
            spec.extra.update(collection=collection_id, table=lk.table.name,
                              table_id=ids[lk.table.name], key_offset=offsets.get(lk.bottom, 0))
            graph.embeddings.append(spec)
        if self.batch_major_top is not None:
            graph.layers = self._batch_major_layers()
        if world_size > 1:
            graph.placements = self.placements(world_size, self.table_names())
        return graph

    def _spec(self, lk: _Lookup, schema: DataSchema, direct_keys: bool) -> EmbeddingSpec:
        where = f"embedding_lookup(top_name={lk.top!r})"
        inputs = {s.name: s for s in schema.sparse}
        if lk.bottom not in inputs:
            raise ConfigError(f"{where}.bottom_name", f"one of the sparse inputs {sorted(inputs)}",
                              lk.bottom)
        sp = inputs[lk.bottom]
        if sp.slot_num != 1:
            raise ConfigError(f"{where}: DataReaderSparseParam({lk.bottom!r}).slot_num",
                              "1 (the embedding collection reads one feature per input)",
                              sp.slot_num)
        if lk.combiner == "concat" and max(sp.nnz_per_slot) > 1:
            hot, ev = max(sp.nnz_per_slot), lk.table.ev_size
            raise NotSupportedError(
                f"{where}: combiner 'concat' of the multi-hot input {lk.bottom!r} "
                f"(nnz_per_slot={sp.nnz_per_slot}, max_hotness={hot}). HugeCTR's concat "
                "combiner does not pool: it puts the vectors of a sample's keys side by side "
                "in input order, zero after its last key, an output of (batch, 1, max_hotness "
                f"* ev_size) = (batch, 1, {hot} * {ev}) = (batch, 1, {hot * ev}). terarec's "
                "embedding tables pool keys (sum / mean) and take 'concat' for one-hot inputs "
                "only (max_hotness 1, where it equals 'sum'). Use 'sum' or 'average' for this "
                "input, or declare it one-hot")
        t = lk.table
        opt = t.opt_params_or_empty.config if t.opt_params_or_empty is not None else None
        if t.is_static and not direct_keys:
            return EmbeddingSpec(DYNAMIC_TYPE, lk.bottom, lk.top, t.ev_size,
                                 COMBINERS[lk.combiner],
                                 max_vocabulary_size_global=t.max_vocabulary_size, optimizer=opt)
        if t.is_static:
            return EmbeddingSpec(STATIC_TYPE, lk.bottom, lk.top, t.ev_size, COMBINERS[lk.combiner],
                                 max_vocabulary_size_global=t.max_vocabulary_size,
                                 slot_size_array=[t.max_vocabulary_size], optimizer=opt)
        return EmbeddingSpec(DYNAMIC_TYPE, lk.bottom, lk.top, t.ev_size, COMBINERS[lk.combiner],
                             max_vocabulary_size_global=DYNAMIC_VOCABULARY, optimizer=opt)

    def _batch_major_layers(self) -> list[LayerSpec]:
        top = self.batch_major_top
        assert top is not None  # noqa: S101 - caller checks
        flat = []
        for lk in self.lookups:
            name = top if len(self.lookups) == 1 else f"{lk.top}_flat"
            flat.append(DenseLayer(Layer_t.Reshape, [lk.top], [name],
                                   leading_dim=lk.table.ev_size).to_spec())
        if len(self.lookups) > 1:
            flat.append(DenseLayer(Layer_t.Concat, [s.top[0] for s in flat], [top]).to_spec())
        return flat

    def placements(self, world_size: int, names: dict[str, str] | None = None
                   ) -> dict[str, TablePlacement]:
        """Placement of every table (keyed by its lookup name) from ``shard(...)``; without a
        ``shard`` call, every table row-wise over all ranks (dp for none)."""
        if names is None:
            _check_unshared(self.lookups_by_table(), world_size)
            names = self.table_names()
        every = list(range(world_size))
        if self.shard_matrix is None:
            return {top: TablePlacement("row_wise", every) for top in names.values()}
        f = "EmbeddingCollectionConfig.shard"
        if len(self.shard_matrix) != world_size:
            raise ConfigError(f"{f}(shard_matrix=...)", f"one entry per GPU ({world_size})",
                              f"{len(self.shard_matrix)} entries")
        on = {n: [g for g, tables in enumerate(self.shard_matrix) if n in tables] for n in names}
        out: dict[str, TablePlacement] = {}
        for strategy, entries in self.shard_strategy:
            for entry in entries:
                name, k = (entry[0], int(entry[1])) if isinstance(entry, (tuple, list)) \
                    else (entry, 0)
                if name not in names:
                    raise ConfigError(f"{f}(shard_strategy=...)", f"tables of the collection "
                                      f"{sorted(names)}", name)
                ranks = on[name]
                if not ranks:
                    raise ConfigError(f"{f}(shard_matrix=...)", f"table {name!r} on some GPU",
                                      self.shard_matrix)
                if names[name] in out:
                    raise ConfigError(f"{f}(shard_strategy=...)", "each table once", name)
                out[names[name]] = _placement(name, strategy, k, ranks, world_size)
        missing = sorted(n for n in names if names[n] not in out)
        if missing:
            raise ConfigError(f"{f}(shard_strategy=...)", "a strategy for every table", missing)
        return out


def _shape(t: EmbeddingTableConfig) -> tuple[int, int]:
    return t.max_vocabulary_size, t.ev_size


def _check_unshared(by_table: dict[str, list[str]], world_size: int) -> None:
    """Several ranks: every table has one lookup (sharded tables are not shared)."""
    for name, tops in by_table.items():
        if len(tops) > 1:
            raise NotSupportedError(
                f"EmbeddingCollectionConfig: table {name!r} is looked up by {tops} on "
                f"{world_size} ranks; a table shared by several lookups must be whole on one "
                "process (sharded tables exchange keys per lookup). Run on one process, or "
                "declare one EmbeddingTableConfig per lookup")


def key_offsets(schema: DataSchema, slot_size_array: list[int]) -> dict[str, int]:
    """Sparse input name -> the offset the reader adds to its keys (the sizes of the slots
    before its first one, ``DataReaderParams.slot_size_array``); empty without one."""
    if not slot_size_array:
        return {}
    out: dict[str, int] = {}
    slot = 0
    for sp in schema.sparse:
        out[sp.name] = int(sum(slot_size_array[:slot]))
        slot += sp.slot_num
    return out


def _placement(name: str, strategy: str, k: int, ranks: list[int], world: int) -> TablePlacement:
    where = f"EmbeddingCollectionConfig.shard, table {name!r}"
    if strategy == "dp":
        if ranks != list(range(world)) or k:
            raise ConfigError(where, '"dp" tables on every GPU of shard_matrix, not split',
                              ranks)
        return TablePlacement("replicated", ranks)
    if k:
        if k != len(ranks):
            raise ConfigError(where, f"a column-wise split into k parts on k GPUs of "
                              f"shard_matrix (k={k})", f"{len(ranks)} GPUs {ranks}")
        return TablePlacement("column_wise", ranks)
    return TablePlacement("table_wise" if len(ranks) == 1 else "row_wise", ranks)

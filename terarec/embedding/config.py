"""``TableConfig``: what an embedding table is (never where it lives), and HugeCTR's sizing rule.

A table config names the table, the sparse input it reads, its vector size, combiner, slots,
row capacity, HugeCTR embedding type, optimizer, initializer and (terarec extension) the
:class:`EvictionPolicy` of a dynamic hash table. Devices, ranks and storage tiers belong to
:mod:`terarec.embedding.plan`; the eviction bookkeeping to :mod:`terarec.embedding.eviction`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from terarec.errors import ConfigError
from terarec.optim.config import OptimizerConfig

EMBEDDING_TYPES = (
    "DistributedSlotSparseEmbeddingHash",
    "LocalizedSlotSparseEmbeddingHash",
    "LocalizedSlotSparseEmbeddingOneHot",
    "HybridSparseEmbedding",
)
LOCALIZED_TYPES = ("LocalizedSlotSparseEmbeddingHash", "LocalizedSlotSparseEmbeddingOneHot")
COMBINERS = {"sum": "sum", "mean": "mean", "average": "mean"}
HASH_INIT_RANGE = 0.05
MAX_DIM = 1024


def vocabulary_from_workspace(
    workspace_mb: float, dim: int, optimizer: OptimizerConfig, num_gpus: int = 1
) -> int:
    """HugeCTR's ``max_vocabulary_size`` from ``workspace_size_per_gpu_in_mb`` (reference §7).

    ``per_gpu = floor(ws_MB * 2**20 / ((1 + k) * 4 * dim))`` where ``k`` is the number of
    optimizer states per weight (Adam 2, +1 with LazyGlobal; SGD 0; ...). Returns the global
    size ``per_gpu * num_gpus`` (the value HugeCTR writes to the graph JSON).

    Example:
        >>> vocabulary_from_workspace(1, 16, OptimizerConfig(type="SGD"))
        16384
    """
    if workspace_mb < 0:
        raise ConfigError("workspace_size_per_gpu_in_mb", "a non-negative number", workspace_mb)
    if dim <= 0:
        raise ConfigError("embedding_vec_size", "a positive integer", dim)
    if num_gpus <= 0:
        raise ConfigError("num_gpus", "a positive integer", num_gpus)
    k = optimizer.states_per_weight
    per_gpu = math.floor(workspace_mb * 2**20 / ((1 + k) * 4 * dim))
    return per_gpu * num_gpus


EVICTION_POLICIES = ("lru", "lfu", "ttl")
DEFAULT_PENDING_BOUND = 1 << 20


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class EvictionPolicy:
    """Admission and eviction of a hash table's rows (terarec extension, opt-in per table).

    Args:
        policy: which resident rows make room when the table is full: ``"lru"`` (oldest
            last-used training step first), ``"lfu"`` (fewest lookups since the key got its
            row first, ties by oldest last use) or ``"ttl"`` (as lru when full, and besides
            every row untouched for more than ``ttl_steps`` training steps is evicted at the
            next training step). Ties are broken by the smaller key.
        ttl_steps: the time to live of ``"ttl"``, in training steps (required for it, not
            allowed with the other policies).
        target: when the new keys of a batch do not fit, rows are evicted down to
            ``floor(target * capacity)`` rows (at least as many as the new keys need), like
            HugeCTR HPS's ``overflow_resolution_target``. In (0, 1]; 1 evicts just enough.
        admit_after: a new key gets a row at its ``admit_after``-th lookup in training (1: at
            first sight). Before that its lookup is out-of-vocabulary: a zero vector in the
            pooling (a ``mean`` still counts it) that gets no gradient.
        max_pending: bound of the counter of keys seen but not yet admitted (``admit_after >
            1``); past it the least recently seen pending keys (ties: larger key first) are
            forgotten and start counting again. None: ``min(capacity, 2**20)``. Memory: 24
            bytes per pending key.

    Rows used by the current batch are never evicted. Evaluation and prediction lookups never
    admit, evict or count: keys without a row give the zero vector.

    Example:
        >>> EvictionPolicy("lfu", target=0.5).admit_after
        1
    """

    policy: str = "lru"
    ttl_steps: int | None = None
    target: float = 0.8
    admit_after: int = 1
    max_pending: int | None = None

    def __post_init__(self) -> None:
        w = "EvictionPolicy"
        if self.policy not in EVICTION_POLICIES:
            raise ConfigError(f"{w}.policy", f"one of {list(EVICTION_POLICIES)}", self.policy)
        if self.policy == "ttl":
            if not _is_int(self.ttl_steps) or self.ttl_steps <= 0:
                raise ConfigError(f"{w}.ttl_steps", 'a positive integer with policy="ttl"',
                                  self.ttl_steps)
        elif self.ttl_steps is not None:
            raise ConfigError(f"{w}.ttl_steps", f'None with policy={self.policy!r} (only '
                              f'policy="ttl" has a time to live)', self.ttl_steps)
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) \
                or not 0 < self.target <= 1:
            raise ConfigError(f"{w}.target", "a number in (0, 1]", self.target)
        if not _is_int(self.admit_after) or self.admit_after < 1:
            raise ConfigError(f"{w}.admit_after", "an integer >= 1", self.admit_after)
        if self.max_pending is not None and (not _is_int(self.max_pending)
                                             or self.max_pending < 1):
            raise ConfigError(f"{w}.max_pending", "None or an integer >= 1", self.max_pending)

    def pending_bound(self, capacity: int) -> int:
        """How many not-yet-admitted keys the admission counter keeps."""
        if self.max_pending is not None:
            return self.max_pending
        return max(1, min(int(capacity), DEFAULT_PENDING_BOUND))

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "ttl_steps": self.ttl_steps, "target": self.target,
                "admit_after": self.admit_after, "max_pending": self.max_pending}

    @classmethod
    def coerce(cls, value: Any, where: str) -> EvictionPolicy:
        """An :class:`EvictionPolicy` from itself or its dict; errors name ``where``."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(where, "an EvictionPolicy or a dict of its fields", value)
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(where, f"fields among {sorted(cls.__dataclass_fields__)}", unknown)
        try:
            return cls(**value)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.where.split('.', 1)[1]}", exc.expected,
                              exc.received) from None


@dataclass
class TableConfig:
    """One sparse embedding table (HugeCTR ``SparseEmbedding`` / ``EmbeddingTableConfig``).

    Args:
        name: ``sparse_embedding_name`` (also the name of the output tensor).
        input_name: ``bottom_name``, the sparse input whose keys it reads.
        dim: ``embedding_vec_size``, 1..1024.
        combiner: ``"sum"`` or ``"mean"`` (``"average"`` is accepted as ``"mean"``).
        slot_num: slots per sample of the input.
        max_vocabulary_size: row capacity; ``<= 0`` takes ``sum(slot_size_array)``.
        slot_size_array: per-slot vocabulary (sizes Localized tables and their init).
        embedding_type: HugeCTR ``Embedding_t`` member name.
        optimizer: the table's sparse optimizer.
        hotness: keys per (sample, slot) when the input guarantees a fixed count (its
            ``DataReaderSparseParam`` has ``is_fixed_length`` and one ``nnz_per_slot`` for every
            slot), else None. Sharded one-hot tables use it to pick fixed-size exchanges.
        init_range: ``a`` of the Uniform(-a, a) init; ``None`` = HugeCTR's default (§7): 0.05,
            or per slot ``sqrt(1/slot_size)`` for Localized tables with ``slot_size_array``.
        eviction: admission / eviction of rows (terarec extension; hash tables only), an
            :class:`EvictionPolicy` or its dict; None (default): rows are never evicted and a
            full table raises CapacityError.

    Example:
        >>> TableConfig("emb", "data1", dim=16, slot_num=2, max_vocabulary_size=1000).combiner
        'sum'
    """

    name: str
    input_name: str
    dim: int
    combiner: str = "sum"
    slot_num: int = 1
    max_vocabulary_size: int = 0
    slot_size_array: list[int] | None = None
    embedding_type: str = "DistributedSlotSparseEmbeddingHash"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    init_range: float | None = None
    hotness: int | None = None
    eviction: EvictionPolicy | None = None

    def _where(self, field_name: str) -> str:
        return f"SparseEmbedding {self.name!r}.{field_name}"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("SparseEmbedding.sparse_embedding_name", "a non-empty string",
                              self.name)
        if not isinstance(self.input_name, str) or not self.input_name:
            raise ConfigError(self._where("bottom_name"), "a non-empty string", self.input_name)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) \
                or not 1 <= self.dim <= MAX_DIM:
            raise ConfigError(self._where("embedding_vec_size"), f"an integer in 1..{MAX_DIM}",
                              self.dim)
        if self.combiner not in COMBINERS:
            raise ConfigError(self._where("combiner"), '"sum" or "mean"', self.combiner)
        self.combiner = COMBINERS[self.combiner]
        if isinstance(self.slot_num, bool) or not isinstance(self.slot_num, int) \
                or self.slot_num <= 0:
            raise ConfigError(self._where("slot_num"), "a positive integer", self.slot_num)
        if self.embedding_type not in EMBEDDING_TYPES:
            raise ConfigError(self._where("embedding_type"), f"one of {list(EMBEDDING_TYPES)}",
                              self.embedding_type)
        if not isinstance(self.optimizer, OptimizerConfig):
            raise ConfigError(self._where("optimizer"), "an OptimizerConfig", self.optimizer)
        self._check_slot_sizes()
        if self.max_vocabulary_size <= 0:
            if not self.slot_size_array:
                raise ConfigError(
                    self._where("max_vocabulary_size"), "a positive row capacity",
                    self.max_vocabulary_size,
                    hint="Give workspace_size_per_gpu_in_mb > 0 or a slot_size_array",
                )
            self.max_vocabulary_size = int(sum(self.slot_size_array))
        if self.init_range is not None and not self.init_range > 0:
            raise ConfigError(self._where("init_range"), "a positive number", self.init_range)
        if self.eviction is not None:
            self.eviction = EvictionPolicy.coerce(self.eviction, self._where("eviction"))
            if self.embedding_type == "LocalizedSlotSparseEmbeddingOneHot":
                raise ConfigError(self._where("eviction"), "None for "
                                  "LocalizedSlotSparseEmbeddingOneHot (its keys are row "
                                  "numbers; eviction needs a hash table)", self.eviction)

    def _check_slot_sizes(self) -> None:
        ssa = self.slot_size_array
        if ssa is not None and len(ssa) == 0:
            self.slot_size_array = ssa = None
        if ssa is None:
            if self.embedding_type == "LocalizedSlotSparseEmbeddingOneHot":
                raise ConfigError(self._where("slot_size_array"),
                                  "a slot_size_array for LocalizedSlotSparseEmbeddingOneHot", ssa)
            return
        ssa = [int(s) for s in ssa]
        if len(ssa) != self.slot_num or any(s <= 0 for s in ssa):
            raise ConfigError(self._where("slot_size_array"),
                              f"{self.slot_num} positive slot sizes (one per slot)", ssa)
        self.slot_size_array = ssa

    @property
    def is_localized(self) -> bool:
        return self.embedding_type in LOCALIZED_TYPES

    def slot_init_bounds(self) -> list[float]:
        """The Uniform(-a, a) bound of each slot (reference §7)."""
        if self.init_range is not None:
            return [float(self.init_range)] * self.slot_num
        if self.is_localized and self.slot_size_array:
            return [math.sqrt(1.0 / s) for s in self.slot_size_array]
        return [HASH_INIT_RANGE] * self.slot_num

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "input_name": self.input_name, "dim": self.dim,
            "combiner": self.combiner, "slot_num": self.slot_num,
            "max_vocabulary_size": self.max_vocabulary_size,
            "slot_size_array": self.slot_size_array, "embedding_type": self.embedding_type,
            "optimizer": self.optimizer.to_dict(), "init_range": self.init_range,
            **({"eviction": self.eviction.to_dict()} if self.eviction is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableConfig:
        d = dict(d)
        d["optimizer"] = OptimizerConfig(**d.get("optimizer", {}))
        return cls(**d)

"""``TableConfig``: what an embedding table is (never where it lives), and HugeCTR's sizing rule.

A table config names the table, the sparse input it reads, its vector size, combiner, slots,
row capacity, HugeCTR embedding type, optimizer and initializer. Devices, ranks and storage
tiers belong to :mod:`terarec.embedding.plan`.
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
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableConfig:
        d = dict(d)
        d["optimizer"] = OptimizerConfig(**d.get("optimizer", {}))
        return cls(**d)

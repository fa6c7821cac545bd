"""Plain data describing a model: the data layer, sparse embeddings and dense layers.

This is what HugeCTR's ``Model.add(...)`` calls accumulate and what the graph JSON stores.
It says nothing about devices or ranks (the placement plan does that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from terarec.data.schema import DataSchema
from terarec.errors import ConfigError
from terarec.optim.config import OptimizerConfig

EMBEDDING_TYPES = (
    "DistributedSlotSparseEmbeddingHash",
    "LocalizedSlotSparseEmbeddingHash",
    "LocalizedSlotSparseEmbeddingOneHot",
    "HybridSparseEmbedding",
)


@dataclass
class EmbeddingSpec:
    """One ``SparseEmbedding``: which sparse input it reads, its table and combiner.

    The vocabulary (workspace / slot_size_array / max_vocabulary_size_global) is checked when a
    table is built for training; inference graphs may leave it out.
    """

    embedding_type: str
    bottom: str
    top: str
    embedding_vec_size: int
    combiner: str = "sum"
    workspace_size_per_gpu_in_mb: float = 0
    max_vocabulary_size_global: int = 0
    slot_size_array: list[int] = field(default_factory=list)
    optimizer: OptimizerConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"SparseEmbedding({self.top!r})"
        if self.embedding_type not in EMBEDDING_TYPES:
            raise ConfigError(f"{where}.embedding_type", f"one of {list(EMBEDDING_TYPES)}",
                              self.embedding_type)
        if not isinstance(self.embedding_vec_size, int) or not 1 <= self.embedding_vec_size <= 1024:
            raise ConfigError(f"{where}.embedding_vec_size", "an integer in 1..1024",
                              self.embedding_vec_size)
        if self.combiner not in ("sum", "mean"):
            raise ConfigError(f"{where}.combiner", "'sum' or 'mean'", self.combiner)
        if self.workspace_size_per_gpu_in_mb < 0:
            raise ConfigError(f"{where}.workspace_size_per_gpu_in_mb", "a non-negative number",
                              self.workspace_size_per_gpu_in_mb)
        if any((not isinstance(s, int)) or s <= 0 for s in self.slot_size_array):
            raise ConfigError(f"{where}.slot_size_array", "positive integers",
                              self.slot_size_array)


@dataclass
class LayerSpec:
    """One dense layer: HugeCTR type name, input/output tensor names, parameters."""

    type: str
    bottom: list[str]
    top: list[str]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphSpec:
    """Data layer + embeddings + dense layers, in the order they were added."""

    schema: DataSchema | None = None
    embeddings: list[EmbeddingSpec] = field(default_factory=list)
    layers: list[LayerSpec] = field(default_factory=list)
    model_name: str = ""

    def tensor_names(self) -> list[str]:
        names: list[str] = []
        if self.schema is not None:
            names += [*self.schema.label_names, self.schema.dense_name]
            names += [s.name for s in self.schema.sparse]
        names += [e.top for e in self.embeddings]
        for layer in self.layers:
            names += layer.top
        return names

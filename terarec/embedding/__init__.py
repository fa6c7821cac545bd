"""Sparse embedding tables: configs, key indexes, fused-update tables, the reference oracle,
collections and placement plans."""

from terarec.embedding.collection import EmbeddingCollection
from terarec.embedding.config import TableConfig, vocabulary_from_workspace
from terarec.embedding.hash_index import DirectIndex, HashIndex
from terarec.embedding.plan import ShardingPlan, TablePlacement, single_device_plan
from terarec.embedding.reference import ReferenceEmbedding
from terarec.embedding.table import EmbeddingTable

__all__ = [
    "DirectIndex", "EmbeddingCollection", "EmbeddingTable", "HashIndex", "ReferenceEmbedding",
    "ShardingPlan", "TableConfig", "TablePlacement", "single_device_plan",
    "vocabulary_from_workspace",
]

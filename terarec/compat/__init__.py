"""The HugeCTR-compatible facade: ``CreateSolver``, ``DataReaderParams``, ``Model`` ...

Translates HugeCTR's argument names into terarec's typed configs; the core never imports it.
"""

from terarec.compat.embedding_collection import EmbeddingCollectionConfig, EmbeddingTableConfig

__all__ = ["EmbeddingCollectionConfig", "EmbeddingTableConfig"]

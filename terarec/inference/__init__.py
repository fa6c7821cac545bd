"""Serving trained models: parameter server tiers, embedding cache and inference sessions.

Mirrors ``hugectr.inference``: ``InferenceParams``, ``VolatileDatabaseParams``,
``PersistentDatabaseParams``, ``UpdateSourceParams``, ``ParameterServerConfig``,
``EmbeddingCacheType_t``, ``HPS``, ``CreateParameterServer``, ``CreateEmbeddingCache``,
``InferenceSession``, ``CreateInferenceSession``, ``InferenceModel``. Optional backends
(RocksDB, Redis) are imported only when configured.
"""

from __future__ import annotations

from terarec.enums import (
    DatabaseOverflowPolicy_t,
    DatabaseType_t,
    EmbeddingCacheType_t,
    UpdateSourceType_t,
)
from terarec.inference.csr import CsrBatch, merge, parse_csr, to_csr
from terarec.inference.dense_network import build_dense_network, embedding_specs_from_graph
from terarec.inference.factories import (
    CreateEmbeddingCache,
    CreateParameterServer,
    EmbeddingCacheHandle,
    ps_config_for,
    read_inference_config,
)
from terarec.inference.model_files import read_sparse_model, write_sparse_model
from terarec.inference.parameter_server import HPS, HierarchicalParameterServer
from terarec.inference.params import (
    InferenceParams,
    ParameterServerConfig,
    PersistentDatabaseParams,
    UpdateSourceParams,
    VolatileDatabaseParams,
)
from terarec.inference.ps_json import parse_ps_json
from terarec.inference.session import (
    CreateInferenceSession,
    InferenceModel,
    InferenceSession,
    SessionCore,
)

__all__ = [
    "HPS", "CreateEmbeddingCache", "CreateInferenceSession", "CreateParameterServer", "CsrBatch",
    "DatabaseOverflowPolicy_t", "DatabaseType_t", "EmbeddingCacheHandle", "EmbeddingCacheType_t",
    "HierarchicalParameterServer", "InferenceModel", "InferenceParams", "InferenceSession",
    "ParameterServerConfig", "PersistentDatabaseParams", "SessionCore", "UpdateSourceParams",
    "UpdateSourceType_t", "VolatileDatabaseParams", "build_dense_network",
    "embedding_specs_from_graph", "merge", "parse_csr", "parse_ps_json", "ps_config_for",
    "read_inference_config", "read_sparse_model", "to_csr", "write_sparse_model",
]

"""Configuration objects of HugeCTR's inference API with their exact names and defaults.

Owns ``InferenceParams`` (§18.1), ``VolatileDatabaseParams``, ``PersistentDatabaseParams``,
``UpdateSourceParams`` (§18.2) and ``ParameterServerConfig`` (§18.4), plus the spelling aliases
HugeCTR's ``ps.json`` accepts for database types. Nothing here touches storage or devices; the
parameter server turns these into tiers.

Required HugeCTR arguments (no default in the binding) use the ``REQUIRED`` marker and are
checked in ``__post_init__``, so the positional order of the binding is kept exactly.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields
from typing import Any

from terarec.enums import (
    DatabaseOverflowPolicy_t,
    DatabaseType_t,
    EmbeddingCacheType_t,
    UpdateSourceType_t,
    coerce,
)
from terarec.errors import ConfigError, NotSupportedError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: Extra spellings found in HugeCTR ``ps.json`` files, mapped to the enum member names.
TYPE_ALIASES: dict[str, str] = {
    "hashmap": "hash_map",
    "hash_map": "hash_map",
    "parallel_hashmap": "parallel_hash_map",
    "parallel_hash_map": "parallel_hash_map",
    "multi_process_hashmap": "multi_process_hash_map",
    "mp_hashmap": "multi_process_hash_map",
    "mp_hash_map": "multi_process_hash_map",
    "redis": "redis_cluster",
    "redis_cluster": "redis_cluster",
    "rocksdb": "rocks_db",
    "rocks_db": "rocks_db",
    "disable": "disabled",
    "disabled": "disabled",
    "none": "disabled",
    "kafka": "kafka_message_queue",
    "kafka_mq": "kafka_message_queue",
    "kafka_message_queue": "kafka_message_queue",
    "null": "null",
    "evict_random": "evict_random",
    "random": "evict_random",
    "evict_least_used": "evict_least_used",
    "least_used": "evict_least_used",
    "evict_oldest": "evict_oldest",
    "oldest": "evict_oldest",
}

CACHE_TYPE_ALIASES = {"dynamic": "Dynamic", "uvm": "UVM", "static": "Static",
                      "stochastic": "stochastic"}


def _enum(enum_cls: Any, value: Any, where: str) -> Any:
    if isinstance(value, str):
        value = TYPE_ALIASES.get(value.lower(), CACHE_TYPE_ALIASES.get(value.lower(), value))
    return coerce(enum_cls, value, where)


def _check_required(obj: Any) -> None:
    missing = [f.name for f in fields(obj) if getattr(obj, f.name) is REQUIRED]
    if missing:
        raise ConfigError(f"{type(obj).__name__}(...)", f"a value for {missing}", None)


@dataclass
class VolatileDatabaseParams:
    """The CPU-memory (or Redis) tier below the GPU cache. Defaults as HugeCTR v24.06."""

    type: Any = DatabaseType_t.parallel_hash_map
    address: str = "127.0.0.1:7000"
    user_name: str = "default"
    password: str = ""
    num_partitions: int = field(default_factory=lambda: min(16, os.cpu_count() or 1))
    allocation_rate: int = 256 * 1024 * 1024
    shared_memory_size: int = 16 * 1024**3
    shared_memory_name: str = "hctr_mp_hash_map_database"
    shared_memory_auto_remove: bool = True
    num_node_connections: int = 5
    max_batch_size: int = 65536
    enable_tls: bool = False
    tls_ca_certificate: str = "cacertbundle.crt"
    tls_client_certificate: str = "client_cert.pem"
    tls_client_key: str = "client_key.pem"
    tls_server_name_identification: str = "redis.localhost"
    overflow_margin: int = 2**64 - 1
    overflow_policy: Any = DatabaseOverflowPolicy_t.evict_random
    overflow_resolution_target: float = 0.8
    initialize_after_startup: bool = True
    initial_cache_rate: float = 1.0
    cache_missed_embeddings: bool = False
    update_filters: list[str] = field(default_factory=lambda: ["^hps_.+$"])

    def __post_init__(self) -> None:
        self.type = _enum(DatabaseType_t, self.type, "VolatileDatabaseParams.type")
        if self.type is DatabaseType_t.rocks_db:
            raise ConfigError("VolatileDatabaseParams.type", "a volatile database type", "rocks_db",
                              hint="rocks_db is a persistent_db backend")
        self.overflow_policy = _enum(DatabaseOverflowPolicy_t, self.overflow_policy,
                                     "VolatileDatabaseParams.overflow_policy")
        if not 0.0 < float(self.overflow_resolution_target) <= 1.0:
            raise ConfigError("VolatileDatabaseParams.overflow_resolution_target",
                              "a fraction in (0, 1]", self.overflow_resolution_target)
        if int(self.num_partitions) < 1:
            raise ConfigError("VolatileDatabaseParams.num_partitions", "an integer >= 1",
                              self.num_partitions)


@dataclass
class PersistentDatabaseParams:
    """The on-disk tier (RocksDB). ``backend=disabled`` by default, as in HugeCTR."""

    backend: Any = DatabaseType_t.disabled
    path: str = field(default_factory=lambda: os.path.join(tempfile.gettempdir(), "rocksdb"))
    num_threads: int = 16
    read_only: bool = False
    max_batch_size: int = 65536
    initialize_after_startup: bool = True
    update_filters: list[str] = field(default_factory=lambda: ["^hps_.+$"])

    def __post_init__(self) -> None:
        self.backend = _enum(DatabaseType_t, self.backend, "PersistentDatabaseParams.backend")
        if self.backend not in (DatabaseType_t.disabled, DatabaseType_t.rocks_db):
            raise ConfigError("PersistentDatabaseParams.backend", "'disabled' or 'rocks_db'",
                              self.backend.name)


@dataclass
class UpdateSourceParams:
    """Kafka stream of incremental embedding updates.

    Accepted for compatibility; terarec has no Kafka consumer, so any ``type`` other than
    ``null`` raises :class:`NotSupportedError` when a parameter server is built with it.
    """

    type: Any = UpdateSourceType_t.null
    brokers: str = "127.0.0.1:9092"
    metadata_refresh_interval_ms: int = 30000
    receive_buffer_size: int = 262144
    poll_timeout_ms: int = 500
    max_batch_size: int = 8192
    failure_backoff_ms: int = 50
    max_commit_interval: int = 32

    def __post_init__(self) -> None:
        self.type = _enum(UpdateSourceType_t, self.type, "UpdateSourceParams.type")

    def check_available(self) -> None:
        if self.type is not UpdateSourceType_t.null:
            raise NotSupportedError(
                "update_source.type = kafka_message_queue: terarec has no Kafka consumer. "
                "Reload a new model version instead (terarec serve polls the model repository)."
            )


@dataclass
class InferenceParams:
    """``hugectr.inference.InferenceParams``: every argument and default of HugeCTR 23.08."""

    model_name: str = REQUIRED
    max_batchsize: int = REQUIRED
    hit_rate_threshold: float = REQUIRED
    dense_model_file: str = REQUIRED
    sparse_model_files: list[str] = REQUIRED
    device_id: int = 0
    use_gpu_embedding_cache: bool = REQUIRED
    cache_size_percentage: float = REQUIRED
    i64_input_key: bool = REQUIRED
    use_mixed_precision: bool = False
    scaler: float = 1.0
    use_algorithm_search: bool = True
    use_cuda_graph: bool = True
    number_of_worker_buffers_in_pool: int = 2
    number_of_refresh_buffers_in_pool: int = 1
    thread_pool_size: int = 16
    cache_refresh_percentage_per_iteration: float = 0.0
    deployed_devices: list[int] = field(default_factory=lambda: [0])
    default_value_for_each_table: list[float] = field(default_factory=lambda: [0.0])
    volatile_db: VolatileDatabaseParams = field(default_factory=VolatileDatabaseParams)
    persistent_db: PersistentDatabaseParams = field(default_factory=PersistentDatabaseParams)
    update_source: UpdateSourceParams = field(default_factory=UpdateSourceParams)
    maxnum_des_feature_per_sample: int = 26
    refresh_delay: float = 0.0
    refresh_interval: float = 0.0
    maxnum_catfeature_query_per_table_per_sample: list[int] = field(default_factory=lambda: [26])
    embedding_vecsize_per_table: list[int] = field(default_factory=lambda: [128])
    embedding_table_names: list[str] = field(default_factory=lambda: [""])
    network_file: str = ""
    label_dim: int = 1
    slot_num: int = 10
    non_trainable_params_file: str = ""
    use_static_table: bool = False
    embedding_cache_type: Any = EmbeddingCacheType_t.Dynamic
    use_context_stream: bool = True
    fuse_embedding_table: bool = False
    use_hctr_cache_implementation: bool = True
    init_ec: bool = True
    enable_pagelock: bool = False
    fp8_quant: bool = False

    def __post_init__(self) -> None:
        _check_required(self)
        if isinstance(self.sparse_model_files, str):
            self.sparse_model_files = [self.sparse_model_files]
        self.sparse_model_files = [str(p) for p in self.sparse_model_files]
        self.embedding_cache_type = _enum(EmbeddingCacheType_t, self.embedding_cache_type,
                                          "InferenceParams.embedding_cache_type")
        if not 0.0 <= float(self.cache_size_percentage) <= 1.0:
            raise ConfigError("InferenceParams.cache_size_percentage", "a fraction in [0, 1]",
                              self.cache_size_percentage)
        if int(self.max_batchsize) < 1:
            raise ConfigError("InferenceParams.max_batchsize", "a positive integer",
                              self.max_batchsize)

    def table_names(self) -> list[str]:
        """Table names, one per sparse file; empty HugeCTR names become ``sparse_embedding{i}``."""
        n = max(len(self.sparse_model_files), 1)
        names = list(self.embedding_table_names) + [""] * n
        return [names[i] or f"sparse_embedding{i + 1}" for i in range(n)]

    def per_table(self, values: list[Any], i: int, what: str) -> Any:
        """``values[i]``, or the single value when one is given for every table."""
        if len(values) == 1:
            return values[0]
        if i >= len(values):
            raise ConfigError(f"InferenceParams.{what}", f"one entry per table (>{i})", values)
        return values[i]


@dataclass
class ParameterServerConfig:
    """``hugectr.inference.ParameterServerConfig`` (§18.4): all models served by one HPS."""

    emb_table_name: dict[str, list[str]]
    embedding_vec_size: dict[str, list[int]]
    max_feature_num_per_sample_per_emb_table: dict[str, list[int]]
    inference_params_array: list[InferenceParams]
    volatile_db: VolatileDatabaseParams = field(default_factory=VolatileDatabaseParams)
    persistent_db: PersistentDatabaseParams = field(default_factory=PersistentDatabaseParams)
    update_source: UpdateSourceParams = field(default_factory=UpdateSourceParams)

    def model(self, model_name: str) -> InferenceParams:
        for p in self.inference_params_array:
            if p.model_name == model_name:
                return p
        raise ConfigError("model_name", f"one of {self.model_names()}", model_name)

    def model_names(self) -> list[str]:
        return [p.model_name for p in self.inference_params_array]

"""Parsing HugeCTR's ``ps.json`` (§18.5) into a :class:`ParameterServerConfig`.

Owns the mapping of ``ps.json`` keys to the Python names of the params dataclasses
(``gpucacheper`` -> ``cache_size_percentage`` ...), the database type aliases ("hashmap",
"parallel_hashmap", "redis", "rocksdb", "kafka_mq") and resolution of relative file paths
(relative to the JSON file when they do not exist relative to the working directory).

Per-model defaults used when a key is absent (HugeCTR's own parser defaults):
``max_batch_size`` 64, ``hit_rate_threshold`` 0.9, ``gpucache`` true, ``gpucacheper`` 0.5,
``dense_file`` "".
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from terarec.errors import ConfigError
from terarec.inference.params import (
    InferenceParams,
    ParameterServerConfig,
    PersistentDatabaseParams,
    UpdateSourceParams,
    VolatileDatabaseParams,
)

#: ``ps.json`` model keys whose Python name differs.
MODEL_KEYS: dict[str, str] = {
    "model": "model_name",
    "sparse_files": "sparse_model_files",
    "dense_file": "dense_model_file",
    "num_of_worker_buffer_in_pool": "number_of_worker_buffers_in_pool",
    "num_of_refresher_buffer_in_pool": "number_of_refresh_buffers_in_pool",
    "deployed_device_list": "deployed_devices",
    "max_batch_size": "max_batchsize",
    "gpucacheper": "cache_size_percentage",
    "gpucache": "use_gpu_embedding_cache",
}

MODEL_DEFAULTS: dict[str, Any] = {
    "max_batchsize": 64, "hit_rate_threshold": 0.9, "use_gpu_embedding_cache": True,
    "cache_size_percentage": 0.5, "dense_model_file": "",
}

_PARAM_FIELDS = {f.name for f in fields(InferenceParams)}


def _db_params(cls: type, block: dict[str, Any] | None, where: str) -> Any:
    block = dict(block or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(block) - known)
    if unknown:
        warnings.warn(f"ps.json {where}: ignoring unknown keys {unknown}", stacklevel=3)
    return cls(**{k: v for k, v in block.items() if k in known})


def _resolve(path: str, base: Path | None) -> str:
    if base is None or not path or os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = base / path
    return str(candidate) if candidate.exists() else path


def _model_params(block: dict[str, Any], i: int, i64: bool, fuse: bool, base: Path | None
                  ) -> InferenceParams:
    kwargs: dict[str, Any] = dict(MODEL_DEFAULTS)
    unknown = []
    for key, value in block.items():
        name = MODEL_KEYS.get(key, key)
        if name in _PARAM_FIELDS:
            kwargs[name] = value
        else:
            unknown.append(key)
    if unknown:
        warnings.warn(f"ps.json models[{i}]: ignoring unknown keys {sorted(unknown)}",
                      stacklevel=3)
    for req in ("model_name", "sparse_model_files"):
        if req not in kwargs:
            raise ConfigError(f"ps.json models[{i}]",
                              f"a {'model' if req == 'model_name' else 'sparse_files'!r} entry",
                              block)
    files = kwargs["sparse_model_files"]
    kwargs["sparse_model_files"] = [_resolve(p, base) for p in
                                    ([files] if isinstance(files, str) else files)]
    for key in ("dense_model_file", "network_file", "non_trainable_params_file"):
        if key in kwargs:
            kwargs[key] = _resolve(kwargs[key], base)
    kwargs.setdefault("i64_input_key", i64)
    kwargs.setdefault("fuse_embedding_table", fuse)
    return InferenceParams(**kwargs)


def parse_ps_json(source: str | os.PathLike[str] | dict[str, Any]) -> ParameterServerConfig:
    """Read a ``ps.json`` (path or already-parsed dict) into a ``ParameterServerConfig``."""
    base: Path | None = None
    if isinstance(source, dict):
        doc = source
    else:
        path = Path(source)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError("ps.json", "an existing file", str(path)) from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"ps.json {str(path)!r}", "valid JSON",
                              f"{exc.msg} at line {exc.lineno}") from exc
        base = path.parent
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ConfigError("ps.json", "an object with a 'models' list", type(doc).__name__)
    i64 = bool(doc.get("supportlonglong", True))
    fuse = bool(doc.get("fuse_embedding_table", False))
    volatile = _db_params(VolatileDatabaseParams, doc.get("volatile_db"), "volatile_db")
    persistent = _db_params(PersistentDatabaseParams, doc.get("persistent_db"), "persistent_db")
    update = _db_params(UpdateSourceParams, doc.get("update_source"), "update_source")
    models = [_model_params(m, i, i64, fuse, base) for i, m in enumerate(doc["models"])]
    for p in models:
        p.volatile_db, p.persistent_db, p.update_source = volatile, persistent, update
    return ParameterServerConfig(
        emb_table_name={p.model_name: p.table_names() for p in models},
        embedding_vec_size={p.model_name: [int(p.per_table(p.embedding_vecsize_per_table, i,
                                                           "embedding_vecsize_per_table"))
                                           for i in range(len(p.sparse_model_files))]
                            for p in models},
        max_feature_num_per_sample_per_emb_table={
            p.model_name: list(p.maxnum_catfeature_query_per_table_per_sample) for p in models},
        inference_params_array=models,
        volatile_db=volatile, persistent_db=persistent, update_source=update,
    )

"""HugeCTR's factory functions and the v3.0 inference JSON reader.

Owns ``read_inference_config`` (the v3.0 JSON: an ``inference`` clause with ``max_batchsize``,
``dense_model_file``, ``sparse_model_file`` + the ``layers`` list), ``ps_config_for`` (one
``ParameterServerConfig`` from ``InferenceParams``), the v3.0 ``CreateParameterServer`` /
``CreateEmbeddingCache`` and the :class:`EmbeddingCacheHandle` an inference session reads
embeddings through.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from terarec.errors import ConfigError
from terarec.inference.dense_network import embedding_specs_from_graph
from terarec.inference.parameter_server import HPS, device_for
from terarec.inference.params import InferenceParams, ParameterServerConfig


def read_inference_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a HugeCTR v3.0 inference JSON.

    Returns a dict with ``max_batchsize`` (int), ``dense_model_file`` (str),
    ``sparse_model_files`` (list of str; ``sparse_model_file`` may be a str or a list), every
    other key of the ``inference`` clause unchanged, and ``layers`` (the raw list).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError("inference config", "an existing JSON file", str(path)) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"inference config {str(path)!r}", "valid JSON",
                          f"{exc.msg} at line {exc.lineno}") from exc
    inf = doc.get("inference")
    if not isinstance(inf, dict):
        raise ConfigError(f"{path.name}", "an 'inference' object", doc.get("inference"))
    for key in ("max_batchsize", "dense_model_file", "sparse_model_file"):
        if key not in inf:
            raise ConfigError(f"{path.name} inference.{key}", "a value", None)
    if not isinstance(doc.get("layers"), list):
        raise ConfigError(f"{path.name} layers", "a list of layers", doc.get("layers"))
    sparse = inf["sparse_model_file"]
    out = {k: v for k, v in inf.items() if k != "sparse_model_file"}
    out.update(max_batchsize=int(inf["max_batchsize"]), dense_model_file=str(inf[
        "dense_model_file"]), sparse_model_files=[sparse] if isinstance(sparse, str)
        else list(sparse), layers=doc["layers"])
    return out


def ps_config_for(params_list: list[InferenceParams],
                  specs: dict[str, list[dict[str, Any]]] | None = None) -> ParameterServerConfig:
    """A ``ParameterServerConfig`` serving ``params_list`` (DB settings from the first one).

    ``specs`` maps a model name to its graph's embedding specs; their sizes win over
    ``embedding_vecsize_per_table``.
    """
    specs = specs or {}
    dims, names, feats = {}, {}, {}
    for p in params_list:
        n = len(p.sparse_model_files)
        s = specs.get(p.model_name)
        dims[p.model_name] = ([int(x["dim"]) for x in s] if s else
                              [int(p.per_table(p.embedding_vecsize_per_table, i,
                                               "embedding_vecsize_per_table")) for i in range(n)])
        names[p.model_name] = p.table_names()
        feats[p.model_name] = list(p.maxnum_catfeature_query_per_table_per_sample)
        if len(dims[p.model_name]) != n:
            raise ConfigError(f"model {p.model_name!r} sparse_model_files",
                              f"one folder per embedding table ({len(dims[p.model_name])})",
                              p.sparse_model_files)
    first = params_list[0]
    return ParameterServerConfig(names, dims, feats, list(params_list), first.volatile_db,
                                 first.persistent_db, first.update_source)


class EmbeddingCacheHandle:
    """The embeddings of one model on one device, as an inference session reads them."""

    def __init__(self, parameter_server: HPS, model_name: str, device_id: int = 0) -> None:
        self.parameter_server = parameter_server
        self.model_name = model_name
        self.device_id = int(device_id)
        self.device = device_for(device_id)

    def lookup(self, table_id: int, keys: Any) -> torch.Tensor:
        return self.parameter_server.lookup_tensor(keys, self.model_name, table_id,
                                                   self.device_id)

    def cache(self, table_id: int) -> Any:
        """The device ``EmbeddingCache`` of a table (``None`` when disabled)."""
        return self.parameter_server.cache(self.model_name, table_id, self.device_id)

    def refresh(self) -> None:
        self.parameter_server.refresh_embedding_cache(self.model_name, self.device_id)

    def stats(self) -> dict[str, dict[str, float]]:
        return self.parameter_server.cache_stats(self.model_name)


def CreateParameterServer(config_files: list[str], model_names: list[str],  # noqa: N802
                          i64_input_key: bool) -> HPS:
    """HugeCTR v3.0: a parameter server for the models of v3.0 inference JSON files."""
    if len(config_files) != len(model_names):
        raise ConfigError("CreateParameterServer", "one model name per config file",
                          (config_files, model_names))
    params, specs = [], {}
    for path, name in zip(config_files, model_names):
        cfg = read_inference_config(path)
        specs[name] = embedding_specs_from_graph({"layers": cfg["layers"]})
        params.append(InferenceParams(
            model_name=name, max_batchsize=cfg["max_batchsize"],
            hit_rate_threshold=float(cfg.get("hit_rate_threshold", 0.9)),
            dense_model_file=cfg["dense_model_file"],
            sparse_model_files=cfg["sparse_model_files"],
            use_gpu_embedding_cache=bool(cfg.get("gpucache", True)),
            cache_size_percentage=float(cfg.get("gpucacheper", 0.2)),
            i64_input_key=i64_input_key,
            embedding_vecsize_per_table=[s["dim"] for s in specs[name]] or [128],
        ))
    return HPS(ps_config_for(params, specs))


def CreateEmbeddingCache(parameter_server: HPS, cuda_dev_id: int,  # noqa: N802
                         use_gpu_embedding_cache: bool, cache_size_percentage: float,
                         model_config_path: str, model_name: str,
                         i64_input_key: bool) -> EmbeddingCacheHandle:
    """HugeCTR v3.0: the embedding cache of ``model_name`` on device ``cuda_dev_id``."""
    parameter_server.configure_cache(model_name, cuda_dev_id, use_gpu_embedding_cache,
                                     cache_size_percentage)
    return EmbeddingCacheHandle(parameter_server, model_name, cuda_dev_id)

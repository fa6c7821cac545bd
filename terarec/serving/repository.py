"""Model repository: numbered versions on disk, loaded and swapped atomically while serving.

Owns the layout ``<root>/<model>/<version>/`` (version = a positive integer folder name) with a
``config.json`` naming the files of that version::

    {"graph": "graph.json",            # HugeCTR graph JSON (network_file)
     "dense": "_dense_1000.model",     # dense weights
     "sparse": ["0_sparse_1000.model"],  # sparse model folders, graph order
     "max_batch_size": 1024,           # optional, default 1024
     "params": {"hit_rate_threshold": 0.9, "gpucacheper": 0.5, ...}}   # optional InferenceParams
     # (ps.json spellings accepted) incl. volatile_db / persistent_db blocks

Relative paths are relative to the version folder. A model folder holding a ``config.pbtxt``
with ``backend: "hugectr"`` (HugeCTR's Triton backend layout, files named by an HPS ``ps.json``)
is served as it is: see :mod:`terarec.serving.hugectr_repository`; any other folder is an
error naming it. Loading a version builds its backend completely before one assignment
publishes it; requests that started on the old version keep
their reference and finish on it, and the old backend is closed when the last one is done.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from terarec.errors import ConfigError
from terarec.inference.session import SessionCore
from terarec.serving.hugectr_repository import (
    hugectr_model_config,
    hugectr_versions,
    is_hugectr_model,
)


class Backend(Protocol):
    core: SessionCore

    def close(self) -> None: ...


Loader = Callable[[str, Path, dict[str, Any]], Backend]
InferenceParamsT = Any


def params_from_config(model: str, folder: Path, config: dict[str, Any]) -> Any:
    """``InferenceParams`` of a version folder's ``config.json`` (or the ready ones of a
    HugeCTR Triton model folder, ``config["inference_params"]``)."""
    if "inference_params" in config:
        return config["inference_params"]
    from terarec.inference.params import (
        InferenceParams,
        PersistentDatabaseParams,
        VolatileDatabaseParams,
    )
    from terarec.inference.ps_json import MODEL_KEYS

    for key in ("graph", "dense", "sparse"):
        if key not in config:
            raise ConfigError(f"{folder / 'config.json'}", f"a {key!r} entry", sorted(config))
    params = dict(config.get("params", {}))
    vdb = VolatileDatabaseParams(**params.pop("volatile_db", {"type": "hash_map"}))
    pdb = PersistentDatabaseParams(**params.pop("persistent_db", {}))
    kwargs = {MODEL_KEYS.get(k, k): v for k, v in params.items()}
    kwargs.setdefault("hit_rate_threshold", 0.9)
    kwargs.setdefault("use_gpu_embedding_cache", True)
    kwargs.setdefault("cache_size_percentage", 0.5)
    kwargs.setdefault("i64_input_key", True)
    return InferenceParams(model_name=model,
                           max_batchsize=int(config.get("max_batch_size", 1024)),
                           dense_model_file=str(folder / config["dense"]),
                           sparse_model_files=[str(folder / s) for s in config["sparse"]],
                           network_file=str(folder / config["graph"]), volatile_db=vdb,
                           persistent_db=pdb, **kwargs)


def make_loader(dense_network: Callable[[InferenceParamsT], Any] | None = None) -> Loader:
    """A loader building sessions; ``dense_network(params) -> (dense_fn, specs)`` overrides
    :func:`~terarec.inference.dense_network.build_dense_network` (tests, custom models)."""
    from terarec.inference.session import _ParamsSession

    def load(model: str, folder: Path, config: dict[str, Any]) -> Backend:
        ip = params_from_config(model, folder, config)
        net = dense_network(ip) if dense_network is not None else None
        return _ParamsSession(ip.network_file, ip, dense_network=net)

    return load


def default_loader(model: str, folder: Path, config: dict[str, Any]) -> Backend:
    """Build a session from a version folder (graph + dense through ``build_dense_network``)."""
    return make_loader()(model, folder, config)


@dataclass
class LoadedModel:
    """One published version and its in-flight request count."""

    name: str
    version: int
    backend: Backend
    config: dict[str, Any]
    inflight: int = 0
    retired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: Any = None

    def acquire(self) -> None:
        with self.lock:
            self.inflight += 1

    def release(self) -> None:
        with self.lock:
            self.inflight -= 1
            done = self.retired and self.inflight == 0
        if done:
            self.backend.close()

    def retire(self) -> None:
        with self.lock:
            self.retired = True
            done = self.inflight == 0
        if done:
            self.backend.close()


class ModelRepository:
    """Versions found under ``root``; the highest version of each model is served."""

    def __init__(self, root: str | Path, loader: Loader = default_loader,
                 ps_json: str | Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError("model repository", "an existing folder", str(self.root))
        self.loader = loader
        self.ps_json = ps_json  # HugeCTR layout: ``--ps`` / ``--backend-config hugectr,ps=``
        self._models: dict[str, LoadedModel] = {}
        self._load_lock = threading.Lock()
        self.errors: dict[str, str] = {}

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        if is_hugectr_model(folder):
            return hugectr_versions(folder)
        return sorted(int(p.name) for p in folder.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / "config.json").is_file())

    def _folders(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def model_names(self) -> list[str]:
        return [p.name for p in self._folders() if self.versions(p.name)]

    def _no_versions(self, name: str) -> ConfigError:
        folder = self.root / name
        if is_hugectr_model(folder):
            return ConfigError(f"model folder {folder}", "a numbered version folder next to "
                               "config.pbtxt (Triton's layout, e.g. 1/)", None)
        return ConfigError(f"model folder {folder}", "config.pbtxt (HugeCTR Triton backend) or "
                           "<version>/config.json (terarec layout)",
                           sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None)

    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def load(self, name: str, version: int | None = None) -> LoadedModel:
        """Load ``version`` (default: the highest) and publish it atomically."""
        with self._load_lock:
            versions = self.versions(name)
            if not versions:
                raise self._no_versions(name)
            version = versions[-1] if version is None else int(version)
            if version not in versions:
                raise ConfigError(f"model {name!r} version", f"one of {versions}", version)
            current = self._models.get(name)
            if current is not None and current.version == version:
                return current
            folder = self.root / name / str(version)
            if is_hugectr_model(self.root / name):
                config = hugectr_model_config(name, self.root / name, self.root, self.ps_json)
            else:
                config = json.loads((folder / "config.json").read_text())
            backend = self.loader(name, folder, config)
            entry = LoadedModel(name, version, backend, config)
            self._models[name] = entry  # the atomic swap
            self.errors.pop(name, None)
        if current is not None:
            current.retire()
        return entry

    def poll(self) -> list[str]:
        """Load models and versions that appeared since the last call; returns what changed."""
        changed = []
        for folder in self._folders():
            if not self.versions(folder.name):
                self.errors[folder.name] = str(self._no_versions(folder.name))
        for name in self.model_names():
            current = self._models.get(name)
            newest = self.versions(name)[-1]
            if current is None or newest > current.version:
                try:
                    self.load(name, newest)
                    changed.append(f"{name}/{newest}")
                except Exception as exc:  # a broken version must not stop serving the others
                    self.errors[name] = f"version {newest}: {exc}"
        return changed

    def close(self) -> None:
        for entry in list(self._models.values()):
            entry.retire()
        self._models.clear()

"""Serving a model folder written for HugeCTR's Triton backend, unchanged.

Owns the HugeCTR layout ``<repo>/<model>/config.pbtxt`` (``backend: "hugectr"``) with numbered
version folders, plus the HPS ``ps.json`` naming the model's files, and turns it into the
``InferenceParams`` terarec's sessions take (the ``ps.json`` keys are mapped by
:func:`terarec.inference.ps_json.parse_ps_json`, nothing is re-mapped here).

Where ``ps.json`` comes from, first match wins:
  1. a ``ps`` (or ``ps_config_file``) entry in the model's ``config.pbtxt`` ``parameters``;
  2. ``terarec serve --ps PATH`` / ``--backend-config hugectr,ps=PATH`` (tritonserver's
     ``--backend-config=hugectr,ps=PATH``);
  3. ``<repo>/ps.json``.

The model's ``ps.json`` entry is authoritative; ``config.pbtxt`` fills only keys it lacks:
``config`` -> ``network_file``, ``gpucache``, ``gpucacheper``, ``hit_rate_threshold``,
``label_dim``, ``slots`` -> ``slot_num``, ``des_feature_num``, ``embedding_vector_size``,
``max_batch_size`` and ``instance_group.gpus`` -> ``deployed_device_list``. Other backend
parameters (``cat_feature_num``, ``max_nnz``, ``embeddingkey_long_type``, ...) size Triton's
buffers and are not needed.

Path rule (:func:`resolve_path`): a path that exists is used as is. An absolute path that does
not exist (HugeCTR deployments write ``/model/dcn/1/dcn.json``) is looked up under the model
repository by its trailing components, longest first (``<repo>/model/dcn/1/dcn.json``,
``<repo>/dcn/1/dcn.json``, ``<repo>/1/dcn.json``, ``<repo>/dcn.json``). A relative path is
looked up next to the file that names it, then under the repository. Otherwise: an error naming
the path and the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from terarec.errors import ConfigError
from terarec.serving.triton_config import TritonModelConfig, read_model_config

CONFIG_PBTXT = "config.pbtxt"
BACKEND = "hugectr"
PS_PARAMETER_KEYS = ("ps", "ps_config_file")
PS_PATH_KEYS = ("sparse_files", "dense_file", "network_file", "non_trainable_params_file")


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(text)


#: ``config.pbtxt`` parameter -> (``ps.json`` model key, converter of its string value).
PBTXT_FALLBACKS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "config": ("network_file", str),
    "gpucache": ("gpucache", _bool),
    "gpucacheper": ("gpucacheper", float),
    "hit_rate_threshold": ("hit_rate_threshold", float),
    "label_dim": ("label_dim", int),
    "slots": ("slot_num", int),
    "des_feature_num": ("maxnum_des_feature_per_sample", int),
    "embedding_vector_size": ("embedding_vecsize_per_table", lambda s: [int(s)]),
}


def is_hugectr_model(folder: Path) -> bool:
    """Whether ``folder`` is a Triton model folder (has ``config.pbtxt``)."""
    return (folder / CONFIG_PBTXT).is_file()


def hugectr_versions(folder: Path) -> list[int]:
    """Numbered version folders of a Triton model folder (Triton's layout)."""
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_path(path: str, *, repo: Path, base: Path | None, where: str) -> str:
    """``path`` made to exist by the rule of this module's docstring; ``where`` names the
    file and key in the error."""
    if not path:
        return path
    p = Path(path)
    if p.exists():
        return str(p)
    if p.is_absolute():
        parts = p.parts[1:]
        candidates = [repo.joinpath(*parts[i:]) for i in range(len(parts))]
    else:
        candidates = ([base / p] if base is not None else []) + [repo / p]
    for c in candidates:
        if c.exists():
            return str(c)
    raise ConfigError(where, "an existing path (or one found under the model repository "
                      f"{repo}; tried {[str(c) for c in candidates]})", path)


def parse_backend_config(value: str) -> tuple[str, str, str]:
    """``"hugectr,ps=/model/ps.json"`` -> ``("hugectr", "ps", "/model/ps.json")``."""
    backend, sep, setting = value.partition(",")
    key, eq, val = setting.partition("=")
    if not sep or not eq or not backend.strip() or not key.strip() or not val:
        raise ConfigError("--backend-config", "BACKEND,KEY=VALUE (e.g. hugectr,ps=/model/ps.json)",
                          value)
    return backend.strip(), key.strip(), val


def ps_json_from_backend_configs(values: list[str]) -> str | None:
    """The ``ps`` path of ``--backend-config hugectr,ps=PATH`` options (the last one wins)."""
    ps = None
    for value in values:
        backend, key, val = parse_backend_config(value)
        if backend != BACKEND or key != "ps":
            raise ConfigError("--backend-config", "hugectr,ps=PATH (the only backend setting "
                              "terarec serve reads)", value)
        ps = val
    return ps


def find_ps_json(cfg: TritonModelConfig, repo: Path, ps_json: str | Path | None) -> Path:
    """The ``ps.json`` serving ``cfg``'s model (order in the module docstring)."""
    for key in PS_PARAMETER_KEYS:
        if key in cfg.parameters:
            where = f"{cfg.path}:{cfg.parameter_lines[key]} parameters {key!r}"
            return Path(resolve_path(cfg.parameters[key], repo=repo, base=cfg.path.parent,
                                     where=where))
    if ps_json is not None:
        return Path(resolve_path(str(ps_json), repo=repo, base=None, where="--ps"))
    if (repo / "ps.json").is_file():
        return repo / "ps.json"
    raise ConfigError(
        f"model folder {cfg.path.parent}", "an HPS ps.json: a 'ps' parameter in its "
        "config.pbtxt, terarec serve --ps PATH (or --backend-config hugectr,ps=PATH), or "
        f"{repo / 'ps.json'}", None)


def _model_entry(doc: Any, ps_path: Path, name: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ConfigError(str(ps_path), "an object with a 'models' list", type(doc).__name__)
    found = [m for m in doc["models"] if isinstance(m, dict) and m.get("model") == name]
    if not found:
        names = [m.get("model") for m in doc["models"] if isinstance(m, dict)]
        raise ConfigError(str(ps_path), f"a 'models' entry with \"model\": {name!r}", names)
    return dict(found[0])


def _fill_from_pbtxt(entry: dict[str, Any], cfg: TritonModelConfig) -> None:
    for key, (ps_key, convert) in PBTXT_FALLBACKS.items():
        if key in cfg.parameters and ps_key not in entry:
            try:
                entry[ps_key] = convert(cfg.parameters[key])
            except ValueError as exc:
                raise cfg.error(key, f"a value for {ps_key}", cfg.parameters[key]) from exc
    if "max_batch_size" not in entry and cfg.max_batch_size > 0:
        entry["max_batch_size"] = cfg.max_batch_size
    gpus = [g for group in cfg.instance_groups for g in group.gpus]
    if "deployed_device_list" not in entry and gpus:
        entry["deployed_device_list"] = gpus


def hugectr_model_config(name: str, folder: Path, repo: Path,
                         ps_json: str | Path | None = None) -> dict[str, Any]:
    """The loader config of a HugeCTR Triton model folder: ``{"layout": "hugectr",
    "config_pbtxt", "ps_json", "inference_params"}`` (all paths checked)."""
    from terarec.inference.ps_json import parse_ps_json

    cfg = read_model_config(folder / CONFIG_PBTXT)
    if cfg.backend != BACKEND:
        raise ConfigError(f"model folder {folder}", f'config.pbtxt with backend: "{BACKEND}" '
                          "(the only Triton backend terarec serves)", cfg.backend or None)
    if cfg.name and cfg.name != name:
        raise ConfigError(f"{cfg.path}: name", f"the model folder's name {name!r} (Triton's "
                          "rule)", cfg.name)
    cfg.check_hugectr_tensors()
    ps_path = find_ps_json(cfg, repo, ps_json)
    try:
        doc = json.loads(ps_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(str(ps_path), "a readable ps.json", str(exc)) from exc
    entry = _model_entry(doc, ps_path, name)
    graph_from_pbtxt = "network_file" not in entry and "config" in cfg.parameters
    _fill_from_pbtxt(entry, cfg)
    for key in PS_PATH_KEYS:
        if key not in entry:
            continue
        where, base = f"{ps_path} model {name!r} {key}", ps_path.parent
        if key == "network_file" and graph_from_pbtxt:
            where = f"{cfg.path}:{cfg.parameter_lines['config']} parameters 'config'"
            base = cfg.path.parent
        values = entry[key]
        if isinstance(values, list):
            entry[key] = [resolve_path(str(v), repo=repo, base=base, where=where)
                          for v in values]
        else:
            entry[key] = resolve_path(str(values), repo=repo, base=base, where=where)
    if not entry.get("network_file"):
        raise ConfigError(f"model {name!r}", f"the graph JSON: network_file in {ps_path} or a "
                          f"'config' parameter in {cfg.path}", None)
    single = {k: v for k, v in doc.items() if k != "models"}
    single["models"] = [entry]
    try:
        params = parse_ps_json(single).model(name)
    except ConfigError as exc:
        raise ConfigError(f"{ps_path} model {name!r}", "a valid HPS model entry",
                          str(exc)) from exc
    return {"layout": "hugectr", "config_pbtxt": str(cfg.path), "ps_json": str(ps_path),
            "inference_params": params}

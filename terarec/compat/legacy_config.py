"""The pre-3.1 full JSON config (``solver`` / ``optimizer`` / ``layers`` with the reader inline).

This is what ``huge_ctr --train config.json`` and the Python ``Session`` of HugeCTR 2.3-3.0
read (§14 of the reference). :func:`read_legacy_config` turns it into the same objects the
Keras-like API builds (``Solver``, ``DataReaderParams``, ``OptParamsPy``, ``GraphSpec``), so one
engine trains both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terarec.compat.optimizer import OptParamsPy
from terarec.compat.reader import AsyncParam, DataReaderParams
from terarec.compat.solver import CreateSolver, Solver
from terarec.errors import ConfigError
from terarec.graph.json_io import graph_from_dict
from terarec.graph.optimizer_json import optimizer_from_json
from terarec.graph.spec import GraphSpec

SOLVER_KEYS = {
    "lr_policy", "display", "max_iter", "num_epochs", "gpu", "batchsize", "batchsize_eval",
    "snapshot", "snapshot_prefix", "eval_interval", "max_eval_batches", "max_eval_samples",
    "dense_model_file", "dense model_file", "model_file", "sparse_model_file",
    "dense_opt_states_file", "sparse_opt_states_file", "mixed_precision", "enable_tf32_compute",
    "eval_metrics", "input_key_type", "seed", "device_layout", "algorithm_search", "cuda_graph",
    "enable_overlap", "holistic_cuda_graph", "export_predictions_prefix", "eval_batches",
    "use_mixed_precision", "scaler", "i64_input_key", "repeat_dataset",
}


@dataclass
class LegacyConfig:
    """Everything a legacy config file says, in terarec's objects."""

    solver: Solver
    reader: DataReaderParams
    optimizer: OptParamsPy
    graph: GraphSpec
    schedule: dict[str, Any] = field(default_factory=dict)
    max_iter: int = 0
    num_epochs: int = 0
    display: int = 200
    snapshot: int = 10000
    snapshot_prefix: str = ""
    eval_interval: int = 1000
    dense_model_file: str = ""
    sparse_model_files: list[str] = field(default_factory=list)
    dense_opt_states_file: str = ""
    sparse_opt_states_files: list[str] = field(default_factory=list)


def _load(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r}", "a readable file", str(exc)) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} line {exc.lineno} column {exc.colno}",
                          "valid JSON", exc.msg) from None
    if not isinstance(obj, dict):
        raise ConfigError(f"config file {str(path)!r}", "a JSON object", type(obj).__name__)
    return obj


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _vvgpu(gpu: Any) -> list[list[int]]:
    if gpu is None:
        return [[0]]
    if isinstance(gpu, list) and gpu and isinstance(gpu[0], list):
        return gpu
    if isinstance(gpu, list):
        return [gpu]
    return [[int(gpu)]]


def _metrics(entries: Any, where: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in entries or ["AUC:1.0"]:
        name, _, thr = str(item).partition(":")
        out[name] = float(thr) if thr else 1.0
    return out


def solver_from_clause(s: dict[str, Any], where: str) -> dict[str, Any]:
    """Keyword arguments for ``CreateSolver`` from a legacy ``solver`` clause."""
    unknown = sorted(set(s) - SOLVER_KEYS)
    if unknown:
        raise ConfigError(f"{where}.solver", f"keys among {sorted(SOLVER_KEYS)}", unknown)
    if "eval_batches" in s:
        raise ConfigError(f"{where}.solver.eval_batches", "max_eval_batches or max_eval_samples "
                          "(eval_batches was removed in HugeCTR)", s["eval_batches"])
    batch_eval = int(s.get("batchsize_eval", 2048))
    max_eval = int(s.get("max_eval_batches", 100))
    if "max_eval_samples" in s:
        max_eval = max(1, int(s["max_eval_samples"]) // batch_eval)
    mp = s.get("mixed_precision", s.get("use_mixed_precision", False))
    kwargs: dict[str, Any] = {
        "seed": int(s.get("seed", 0)),
        "batchsize": int(s.get("batchsize", 2048)),
        "batchsize_eval": batch_eval,
        "max_eval_batches": max_eval,
        "vvgpu": _vvgpu(s.get("gpu")),
        "repeat_dataset": "num_epochs" not in s,
        "use_mixed_precision": bool(mp),
        "scaler": float(mp) if not isinstance(mp, bool) and mp else float(s.get("scaler", 1.0)),
        "enable_tf32_compute": bool(s.get("enable_tf32_compute", False)),
        "i64_input_key": s.get("input_key_type", "I32") == "I64" or
        bool(s.get("i64_input_key", False)),
        "use_algorithm_search": bool(s.get("algorithm_search", True)),
        "use_cuda_graph": bool(s.get("cuda_graph", True)),
    }
    from terarec.enums import MetricsType, coerce

    kwargs["metrics_spec"] = {coerce(MetricsType, k, f"{where}.solver.eval_metrics"): v
                              for k, v in _metrics(s.get("eval_metrics"), where).items()}
    return kwargs


def reader_from_data_layer(d: dict[str, Any], where: str) -> DataReaderParams:
    ap = d.get("async_param", {})
    async_param = AsyncParam(
        int(ap.get("num_threads", 16)), int(ap.get("num_batches_per_thread", 4)),
        int(ap.get("io_block_size", 512000)), int(ap.get("io_depth", 4)),
        int(ap.get("io_alignment", 512)), bool(ap.get("shuffle", False)),
        multi_hot_reader=bool(ap.get("multi_hot_reader", False)),
        is_dense_float=bool(ap.get("is_dense_float", False)),
    )
    check = d.get("check", "Sum")
    if "source" not in d:
        raise ConfigError(f"{where}.source", "the training file list / data file", None)
    return DataReaderParams(
        data_reader_type=d.get("format", "Norm"),
        source=_as_list(d["source"]) if isinstance(d["source"], list) else d["source"],
        eval_source=d.get("eval_source", ""),
        check_type="Non" if check in ("None", "Non") else check,
        cache_eval_data=int(d.get("cache_eval_data", 0)),
        num_samples=int(d.get("num_samples", 0)),
        eval_num_samples=int(d.get("eval_num_samples", 0)),
        float_label_dense=bool(d.get("float_label_dense", False)),
        num_workers=int(d.get("num_workers", 12)),
        slot_size_array=[int(x) for x in d.get("slot_size_array", [])],
        async_param=async_param,
    )


def read_legacy_config(path: str | Path, solver_overrides: dict[str, Any] | None = None
                       ) -> LegacyConfig:
    """Parse a legacy config file (``solver_overrides`` replace the ``solver`` clause's values)."""
    where = f"config file {str(path)!r}"
    obj = _load(path)
    for key in ("optimizer", "layers"):
        if key not in obj:
            raise ConfigError(f"{where}.{key}", "this clause to be present", None,
                              hint=f"Clauses found: {sorted(obj)}")
    s = obj.get("solver", {})
    kwargs = solver_from_clause(s, where)
    kwargs.update(solver_overrides or {})
    opt_cfg, schedule = optimizer_from_json(obj["optimizer"], f"{where}.optimizer")
    if "learning_rate" in schedule:
        kwargs.setdefault("lr", float(schedule["learning_rate"]))
    for key in ("warmup_steps", "decay_start", "decay_steps"):
        if key in schedule:
            kwargs.setdefault(key, int(schedule[key]))
    for key in ("decay_power", "end_lr"):
        if key in schedule:
            kwargs.setdefault(key, float(schedule[key]))
    solver = CreateSolver(**kwargs)
    layers = obj["layers"]
    if not isinstance(layers, list) or not layers or layers[0].get("type") != "Data":
        raise ConfigError(f"{where}.layers[0]", 'the "Data" layer first', layers[:1])
    reader = reader_from_data_layer(layers[0], f"{where}.layers[0]")
    graph = graph_from_dict({"layers": layers}, where, solver.num_gpus)
    return LegacyConfig(
        solver=solver, reader=reader, optimizer=OptParamsPy(opt_cfg), graph=graph,
        schedule=schedule,
        max_iter=int(s.get("max_iter", 0)), num_epochs=int(s.get("num_epochs", 0)),
        display=int(s.get("display", 200)), snapshot=int(s.get("snapshot", 10000)),
        snapshot_prefix=str(s.get("snapshot_prefix", "")),
        eval_interval=int(s.get("eval_interval", 1000)),
        dense_model_file=str(s.get("dense_model_file", s.get("model_file",
                                                            s.get("dense model_file", "")))),
        sparse_model_files=_as_list(s.get("sparse_model_file")),
        dense_opt_states_file=str(s.get("dense_opt_states_file", "")),
        sparse_opt_states_files=_as_list(s.get("sparse_opt_states_file")),
    )

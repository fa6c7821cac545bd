"""HugeCTR graph JSON <-> :class:`GraphSpec` (``graph_to_json`` / ``construct_from_json``).

Layout (§13 of the reference): ``{"layers": [Data, embeddings..., dense layers...],
"model_name": ...}``. The writer also emits the keys HugeCTR's own writer forgets (Reshape
``shape``, Select, MultiCross ``projection_dim``, MultiCrossEntropyLoss ``target_weight``);
the reader accepts HugeCTR's output and the pre-3.1 spellings (``max_vocabulary_size_per_gpu``,
``combiner: 0|1``, ``max_feature_num_per_sample``/``max_nnz``, ``Multiply``/``DotProduct``).
Every error names the entry (``layers[3] "fc1"``) and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from terarec.data.schema import DataSchema, SparseSpec
from terarec.enums import LAYER_ALIASES
from terarec.errors import ConfigError
from terarec.graph.optimizer_json import optimizer_from_json, optimizer_to_json
from terarec.graph.spec import EMBEDDING_TYPES, EmbeddingSpec, GraphSpec, LayerSpec
from terarec.utils.atomic import write_bytes_atomic
from terarec.utils.paths import check_local_path

_ONE_OR_LIST = (str, list)


def _names(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(where, "a tensor name or a non-empty list of names", value)


def _one_or_list(names: list[str]) -> str | list[str]:
    return names[0] if len(names) == 1 else list(names)


def _require(entry: dict[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise ConfigError(f"{where}.{key}", "this key to be present", None,
                          hint=f"Keys found: {sorted(entry)}")
    return entry[key]


# ---------------------------------------------------------------------------- data layer
def data_layer_to_json(schema: DataSchema) -> dict[str, Any]:
    labels: Any = _one_or_list(schema.label_names)
    dims: Any = schema.label_dims[0] if len(schema.label_dims) == 1 else list(schema.label_dims)
    out: dict[str, Any] = {
        "type": "Data",
        "label": {"top": labels, "label_dim": dims},
        "dense": {"top": schema.dense_name, "dense_dim": schema.dense_dim},
        "sparse": [
            {"top": s.name, "type": "DistributedSlot", "nnz_per_slot": list(s.nnz_per_slot),
             "is_fixed_length": bool(s.is_fixed_length), "slot_num": s.slot_num}
            for s in schema.sparse
        ],
    }
    if schema.label_weights is not None:
        out["label"]["label_weight"] = list(schema.label_weights)
    return out


def data_layer_from_json(entry: dict[str, Any], where: str) -> DataSchema:
    label = _require(entry, "label", where)
    dense = _require(entry, "dense", where)
    label_names = _names(_require(label, "top", f"{where}.label"), f"{where}.label.top")
    dims = _require(label, "label_dim", f"{where}.label")
    label_dims = [int(d) for d in dims] if isinstance(dims, list) else [int(dims)]
    sparse = []
    for i, s in enumerate(entry.get("sparse", [])):
        w = f"{where}.sparse[{i}]"
        slot_num = int(_require(s, "slot_num", w))
        if "nnz_per_slot" in s:
            nnz = s["nnz_per_slot"]
        elif "max_nnz" in s:  # pre-3.1 spelling
            nnz = int(s["max_nnz"])
        elif "max_feature_num_per_sample" in s:  # pre-3.1, no per-slot bound given
            nnz = int(s["max_feature_num_per_sample"])
        else:  # inference graphs often omit it: one key per slot, as HugeCTR's default
            nnz = 1
        sparse.append(SparseSpec(
            name=_names(_require(s, "top", w), f"{w}.top")[0],
            nnz_per_slot=nnz,
            is_fixed_length=bool(s.get("is_fixed_length", False)),
            slot_num=slot_num,
        ))
    return DataSchema(
        label_dims=label_dims,
        label_names=label_names,
        dense_dim=int(_require(dense, "dense_dim", f"{where}.dense")),
        dense_name=_names(_require(dense, "top", f"{where}.dense"), f"{where}.dense.top")[0],
        sparse=sparse,
        label_weights=label.get("label_weight"),
    )


# ---------------------------------------------------------------------------- embeddings
def embedding_to_json(spec: EmbeddingSpec) -> dict[str, Any]:
    hparam: dict[str, Any] = {
        "workspace_size_per_gpu_in_mb": spec.workspace_size_per_gpu_in_mb,
        "max_vocabulary_size_global": spec.max_vocabulary_size_global,
        "embedding_vec_size": spec.embedding_vec_size,
        "combiner": spec.combiner,
    }
    if spec.slot_size_array:
        hparam["slot_size_array"] = list(spec.slot_size_array)
    hparam.update(spec.extra)
    out: dict[str, Any] = {"type": spec.embedding_type, "bottom": spec.bottom, "top": spec.top,
                           "sparse_embedding_hparam": hparam}
    if spec.optimizer is not None:
        out["optimizer"] = optimizer_to_json(spec.optimizer)
    return out


def embedding_from_json(entry: dict[str, Any], where: str, num_gpus: int = 1) -> EmbeddingSpec:
    hp = _require(entry, "sparse_embedding_hparam", where)
    w = f"{where}.sparse_embedding_hparam"
    combiner = hp.get("combiner", "sum")
    if combiner in (0, 1):  # pre-3.1: 0 = sum, 1 = mean
        combiner = ("sum", "mean")[combiner]
    vocab_global = int(hp.get("max_vocabulary_size_global", 0))
    if "max_vocabulary_size_per_gpu" in hp:  # pre-3.1 spelling
        vocab_global = int(hp["max_vocabulary_size_per_gpu"]) * num_gpus
    known = {"workspace_size_per_gpu_in_mb", "max_vocabulary_size_global",
             "max_vocabulary_size_per_gpu", "embedding_vec_size", "combiner", "slot_size_array",
             "load_factor"}
    extra = {k: v for k, v in hp.items() if k not in known}
    optimizer = None
    if "optimizer" in entry:
        optimizer, _ = optimizer_from_json(entry["optimizer"], f"{where}.optimizer")
    try:
        return EmbeddingSpec(
            embedding_type=entry["type"],
            bottom=_names(_require(entry, "bottom", where), f"{where}.bottom")[0],
            top=_names(_require(entry, "top", where), f"{where}.top")[0],
            embedding_vec_size=int(_require(hp, "embedding_vec_size", w)),
            combiner=combiner,
            workspace_size_per_gpu_in_mb=float(hp.get("workspace_size_per_gpu_in_mb", 0)),
            max_vocabulary_size_global=vocab_global,
            slot_size_array=[int(s) for s in hp.get("slot_size_array", [])],
            optimizer=optimizer,
            extra=extra,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.where}", exc.expected, exc.received) from None


# ---------------------------------------------------------------------------- dense layers
def _layer_class(type_name: str, where: str) -> type:
    from terarec.layers import LAYERS

    return LAYERS.get(LAYER_ALIASES.get(type_name, type_name), f"{where}.type")


def layer_to_json(spec: LayerSpec) -> dict[str, Any]:
    cls = _layer_class(spec.type, spec.type)
    out: dict[str, Any] = {"type": spec.type, "bottom": _one_or_list(spec.bottom),
                           "top": _one_or_list(spec.top)}
    try:
        out.update(cls.params_to_json(spec.params))
    except ConfigError as exc:  # name the layer: params_to_json only sees its params
        raise ConfigError(f"graph_to_json: layer {spec.type} (top {spec.top}): {exc.where}",
                          exc.expected, exc.received, hint=_hint(exc)) from None
    return out


def _hint(exc: ConfigError) -> str:
    """The hint of a ConfigError: its message after ``where: expected ... Received: ...``."""
    base = f"{exc.where}: expected {exc.expected}. Received: {exc.received!r}"
    return str(exc)[len(base):].removeprefix(". ")


def layer_from_json(entry: dict[str, Any], where: str) -> LayerSpec:
    type_name = entry["type"]
    cls = _layer_class(type_name, where)
    params = cls.params_from_json(entry, where)
    return LayerSpec(
        type=LAYER_ALIASES.get(type_name, type_name),
        bottom=_names(_require(entry, "bottom", where), f"{where}.bottom"),
        top=_names(_require(entry, "top", where), f"{where}.top"),
        params=params,
    )


# ---------------------------------------------------------------------------- whole graph
def graph_to_dict(spec: GraphSpec) -> dict[str, Any]:
    layers: list[dict[str, Any]] = []
    if spec.schema is not None:
        layers.append(data_layer_to_json(spec.schema))
    layers += [embedding_to_json(e) for e in spec.embeddings]
    layers += [layer_to_json(layer) for layer in spec.layers]
    out: dict[str, Any] = {"layers": layers}
    if spec.model_name:
        out["model_name"] = spec.model_name
    return out


def write_graph_json(spec: GraphSpec, path: str | Path) -> None:
    check_local_path(path, "graph_to_json(graph_config_file=...)")
    text = json.dumps(graph_to_dict(spec), indent=2)
    write_bytes_atomic(path, (text + "\n").encode())


def _entry_where(i: int, entry: Any) -> str:
    if isinstance(entry, dict):
        label = entry.get("name") or entry.get("top")
        if isinstance(label, list):
            label = label[0] if label else None
        if label:
            return f'layers[{i}] "{label}"'
    return f"layers[{i}]"


def graph_from_dict(obj: Any, source: str = "graph JSON", num_gpus: int = 1,
                    include_dense_network: bool = True) -> GraphSpec:
    if not isinstance(obj, dict) or not isinstance(obj.get("layers"), list):
        raise ConfigError(source, 'an object with a "layers" list', type(obj).__name__)
    spec = GraphSpec(model_name=str(obj.get("model_name", "")))
    for i, entry in enumerate(obj["layers"]):
        where = f"{source}: {_entry_where(i, entry)}"
        if not isinstance(entry, dict) or "type" not in entry:
            raise ConfigError(where, 'an object with a "type"', entry)
        type_name = entry["type"]
        if type_name == "Data":
            if spec.schema is not None:
                raise ConfigError(where, "a single Data layer", "a second Data layer")
            spec.schema = data_layer_from_json(entry, where)
        elif type_name in EMBEDDING_TYPES:
            spec.embeddings.append(embedding_from_json(entry, where, num_gpus))
        elif include_dense_network:
            spec.layers.append(layer_from_json(entry, where))
    if spec.schema is None:
        raise ConfigError(source, 'a "Data" layer as the first entry of "layers"', None)
    return spec


def read_graph_json(path: str | Path, num_gpus: int = 1,
                    include_dense_network: bool = True) -> GraphSpec:
    path = Path(check_local_path(path, "graph JSON file (graph_config_file)"))
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"graph JSON file {str(path)!r}", "a readable file", str(exc)) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"graph JSON file {str(path)!r} line {exc.lineno} column {exc.colno}",
            "valid JSON", exc.msg,
        ) from None
    return graph_from_dict(obj, f"{path}", num_gpus, include_dense_network)

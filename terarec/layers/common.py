"""Shared helpers for dense layers: ``DenseLayer`` defaults, typed param access, JSON helpers.

Owns the table of HugeCTR ``DenseLayer(...)`` keyword defaults (§9) and small functions that
read params with those defaults, validate them with errors naming the layer, and read/write
the common JSON sub-objects (``weight_init``/``bias_init`` only written when not Default).
Does not own any layer.
"""

from __future__ import annotations

from typing import Any

import torch

from terarec.enums import name_of
from terarec.errors import ConfigError
from terarec.layers.base import Layer, Shape
from terarec.layers.init import INITIALIZERS, init_tensor

DEFAULTS: dict[str, Any] = {
    "factor": 1.0, "eps": 1e-5, "gamma_init_type": "Default", "beta_init_type": "Default",
    "dropout_rate": 0.5, "elu_alpha": 1.0, "num_output": 1, "weight_init_type": "Default",
    "bias_init_type": "Default", "num_layers": 0, "leading_dim": 0, "time_step": 0,
    "batchsize": 1, "SeqLength": 1, "vector_size": 1, "selected": False, "selected_slots": [],
    "ranges": [], "indices": [], "weight_dims": [], "projection_dim": 0, "out_dim": 0,
    "axis": 1, "max_sequence_len_from": 1, "max_sequence_len_to": 1,
    "num_attention_heads": 1, "transpose_b": False, "target_weight_vec": [],
    "use_regularizer": False, "regularizer_type": "L1", "lambda": 0.0, "pos_type": "Non",
    "act_type": "Relu", "num_outputs": [], "use_bias": True, "activations": [], "biases": [],
    "shape": [], "dim": 0, "index": [],
}

INIT_NAMES = ("Default", "Uniform", "XavierNorm", "XavierUniform", "Zero")


def hp(layer: Layer, key: str) -> Any:
    """``layer.params[key]`` or its §9 default; enum members become their names."""
    value = layer.params.get(key, DEFAULTS.get(key))
    if value is None:
        value = DEFAULTS.get(key)
    if isinstance(value, (list, tuple)):
        return [name_of(v) if hasattr(v, "name") else v for v in value]
    if hasattr(value, "name") and not isinstance(value, (int, float, str, bool)):
        return name_of(value)
    return value


def hp_int(layer: Layer, key: str, *, minimum: int | None = None) -> int:
    value = hp(layer, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        layer.fail(key, "an integer", value)
    if minimum is not None and int(value) < minimum:
        layer.fail(key, f"an integer >= {minimum}", value)
    return int(value)


def hp_float(layer: Layer, key: str) -> float:
    value = hp(layer, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        layer.fail(key, "a number", value)
    return float(value)


def hp_int_list(layer: Layer, key: str) -> list[int]:
    value = hp(layer, key)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        layer.fail(key, "a list of integers", value)
    return [int(v) for v in value]


def hp_init(layer: Layer, key: str) -> str:
    value = hp(layer, key)
    if value not in INIT_NAMES:
        layer.fail(key, f"one of {list(INIT_NAMES)}", value)
    return str(value)


def hp_act(layer: Layer, value: Any, key: str) -> str:
    """Normalize an activation name ("Relu"/"Non"; "None" accepted) or fail."""
    name = name_of(value)
    if name in ("Relu", "ReLU", "relu"):
        return "Relu"
    if name in ("Non", "None", "none", "non"):
        return "Non"
    layer.fail(key, "'Relu' or 'Non'", value)
    return ""  # unreachable


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Compute dtype for reductions: float64 stays, everything else becomes float32."""
    return x if x.dtype == torch.float64 else x.float()


def act_to_json(value: Any) -> str:
    """HugeCTR JSON spelling of an activation: "Relu" or "None"."""
    return "Relu" if name_of(value) in ("Relu", "ReLU", "relu") else "None"


def make_param(
    layer: Layer, kind: str, role: str, shape: Shape, fan_in: int, fan_out: int
) -> torch.nn.Parameter:
    """A trainable parameter drawn from ``layer.generator`` with initializer ``kind``."""
    t = init_tensor(kind, role, shape, fan_in, fan_out, layer.generator)
    return torch.nn.Parameter(t)


def require_rank(layer: Layer, index: int, ranks: tuple[int, ...]) -> Shape:
    shape = layer.input_shapes[index]
    if len(shape) not in ranks:
        want = " or ".join(f"{r}D" for r in ranks)
        layer.fail(f"bottom[{index}] shape", f"a {want} tensor", shape)
    return shape


def require_same_shapes(layer: Layer) -> Shape:
    first = layer.input_shapes[0]
    for i, s in enumerate(layer.input_shapes[1:], start=1):
        if s != first:
            layer.fail(f"bottom[{i}] shape", f"the same shape as bottom[0] {first}", s)
    return first


# -- JSON helpers --------------------------------------------------------------------------
def json_get(entry: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    """``entry[key]``; a missing required key raises ConfigError naming ``where.key``."""
    if key in entry:
        return entry[key]
    if default is ...:
        raise ConfigError(f"{where}.{key}", "this key to be present", None)
    return default


def json_obj(entry: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = json_get(entry, key, where)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.{key}", "a JSON object", value)
    return value


def json_num(entry: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    value = json_get(entry, key, where, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}.{key}", "a number", value)
    return value


def json_int_list(entry: dict[str, Any], key: str, where: str, default: Any = ...) -> list[int]:
    value = json_get(entry, key, where, default)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{where}.{key}", "a list of integers", value)
    return list(value)


def inits_to_json(params: dict[str, Any], out: dict[str, Any], pairs: dict[str, str]) -> None:
    """Write ``json_key: init`` for each ``param_key -> json_key`` whose init is not Default."""
    for pkey, jkey in pairs.items():
        value = name_of(params.get(pkey, "Default"))
        if value != "Default":
            out[jkey] = value


def inits_from_json(
    obj: dict[str, Any], where: str, pairs: dict[str, str], out: dict[str, Any]
) -> None:
    for pkey, jkey in pairs.items():
        if jkey in obj:
            value = obj[jkey]
            if value not in INITIALIZERS:
                raise ConfigError(f"{where}.{jkey}", f"one of {list(INIT_NAMES)}", value)
            out[pkey] = value


FC_INITS = {"weight_init_type": "weight_init", "bias_init_type": "bias_init"}
NORM_INITS = {"gamma_init_type": "gamma_init", "beta_init_type": "beta_init"}


def pget(params: dict[str, Any], key: str) -> Any:
    """Param with §9 default (for classmethods that have no layer instance)."""
    value = params.get(key, DEFAULTS.get(key))
    return name_of(value) if hasattr(value, "name") and not isinstance(value, str) else value

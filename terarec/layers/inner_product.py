"""Fully connected layers: ``InnerProduct`` and ``FusedInnerProduct``.

Owns y = x @ W + b acting on the last dimension of a 2D (B, K) or 3D (B, S, K) input, with W
stored (K, N) and b (1, N) as in HugeCTR's dense model file. ``FusedInnerProduct`` (HugeCTR's
FP16-only fused FC+bias+ReLU, <= 23.08) is accepted in any precision here; its extra tops of
the Head/Body positions are auxiliary (ReLU mask, zero dReLU, zero bias-grad) so graphs that
wire them still build.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import (
    FC_INITS,
    act_to_json,
    hp,
    hp_act,
    hp_init,
    hp_int,
    inits_from_json,
    inits_to_json,
    json_get,
    json_num,
    json_obj,
    make_param,
    pget,
    require_rank,
)


def fc_weights(layer: Layer, k: int, n: int, use_bias: bool = True) -> tuple[nn.Parameter, Any]:
    """(W (k, n), b (1, n) or None) drawn with the layer's weight/bias init types."""
    w_kind = hp_init(layer, "weight_init_type")
    b_kind = hp_init(layer, "bias_init_type")
    w = make_param(layer, w_kind, "fc_weight", (k, n), k, n)
    b = make_param(layer, b_kind, "fc_bias", (1, n), k, n) if use_bias else None
    return w, b


@LAYERS.register("InnerProduct")
class InnerProduct(Layer):
    """y = x @ W + b on the last dim.

    Args (params): num_output, weight_init_type, bias_init_type.
    Shapes: (B, K) -> (B, N) or (B, S, K) -> (B, S, N).

    Example:
        >>> fc = InnerProduct({"num_output": 3}, [(8, 5)])
        >>> fc(torch.zeros(2, 5)).shape
        torch.Size([2, 3])
    """

    type_name = "InnerProduct"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = require_rank(self, 0, (2, 3))
        self.num_output = hp_int(self, "num_output", minimum=1)
        self.weight, self.bias = fc_weights(self, shape[-1], self.num_output)

    def output_shapes(self) -> list[Shape]:
        return [(*self.input_shapes[0][:-1], self.num_output)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight.to(x.dtype)) + self.bias.to(x.dtype).view(-1)

    def dense_weights(self) -> list[torch.Tensor]:
        return [self.weight, self.bias]

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        fc: dict[str, Any] = {"num_output": int(params.get("num_output", 1))}
        inits_to_json(params, fc, FC_INITS)
        return {"fc_param": fc}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        fc = json_obj(entry, "fc_param", where)
        out: dict[str, Any] = {"num_output": int(json_num(fc, "num_output", f"{where}.fc_param"))}
        inits_from_json(fc, f"{where}.fc_param", FC_INITS, out)
        return out


@LAYERS.register("FusedInnerProduct")
class FusedInnerProduct(InnerProduct):
    """FC + bias + activation (``act_type`` "Relu" by default, "Non" = linear).

    Inputs: 1..4 bottoms (only the first is data). Tops: 1, or 4 for pos_type Head/Body:
    (out, relu mask, dRelu placeholder (zeros), bias-grad placeholder (1, N) zeros).
    """

    type_name = "FusedInnerProduct"
    num_inputs = (1, 4)
    num_outputs = (1, 4)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.act = hp_act(self, hp(self, "act_type"), "act_type")
        self.pos_type = str(hp(self, "pos_type"))
        valid = ("Non", "None", "Head", "Body", "Tail", "Isolated")
        if self.pos_type not in valid:
            self.fail("pos_type", f"one of {list(valid)}", self.pos_type)
        self.n_tops = 4 if self.pos_type in ("Head", "Body") else 1

    def output_shapes(self) -> list[Shape]:
        out = super().output_shapes()[0]
        if self.n_tops == 1:
            return [out]
        return [out, out, out, (1, self.num_output)]

    def forward(self, x: torch.Tensor, *_: torch.Tensor) -> Any:
        y = super().forward(x)
        if self.act == "Relu":
            y = torch.relu(y)
        if self.n_tops == 1:
            return y
        mask = (y > 0).to(y.dtype)
        return y, mask, torch.zeros_like(y), y.new_zeros(1, self.num_output)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        out = super().params_to_json(params)
        pos = pget(params, "pos_type")
        out["position"] = "None" if pos in ("Non", "None") else pos
        out["activation"] = act_to_json(pget(params, "act_type"))
        return out

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        out = super().params_from_json(entry, where)
        out["pos_type"] = json_get(entry, "position", where, "Non")
        out["act_type"] = json_get(entry, "activation", where, "Relu")
        return out

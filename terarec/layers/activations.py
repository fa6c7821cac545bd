"""Element-wise activations and friends: ReLU, ReLUHalf, Sigmoid, ELU, PReLU_Dice, Dropout,
Softmax (optionally masked) and Cast.

Owns layers whose output has the input's shape and that hold no trainable weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import hp_float, json_num, json_obj


class _SameShape(Layer):
    """Base of one-input layers whose output shape equals the input's."""

    def output_shapes(self) -> list[Shape]:
        return [self.input_shapes[0]]


@LAYERS.register("ReLU")
class ReLU(_SameShape):
    """max(x, 0)."""

    type_name = "ReLU"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


@LAYERS.register("ReLUHalf")
class ReLUHalf(ReLU):
    """HugeCTR's internal FP16 ReLU; behaves exactly as ReLU in any dtype."""

    type_name = "ReLUHalf"


@LAYERS.register("Sigmoid")
class Sigmoid(_SameShape):
    """1 / (1 + exp(-x))."""

    type_name = "Sigmoid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@LAYERS.register("ELU")
class ELU(_SameShape):
    """x > 0 ? x : elu_alpha * (exp(x) - 1). JSON: ``elu_param{alpha}``."""

    type_name = "ELU"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.alpha = hp_float(self, "elu_alpha")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, alpha=self.alpha)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"elu_param": {"alpha": float(params.get("elu_alpha", 1.0))}}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        obj = json_obj(entry, "elu_param", where)
        return {"elu_alpha": float(json_num(obj, "alpha", f"{where}.elu_param"))}


@LAYERS.register("PReLU_Dice")
class PReLUDice(_SameShape):
    """Dice activation (DIN): p = sigmoid((x - E[x]) / sqrt(Var[x] + eps)),
    y = p * x + (1 - p) * alpha * x, with E/Var the per-feature batch mean and (biased)
    variance, computed from the current batch in training and evaluation alike (as HugeCTR).
    ``alpha`` (param ``elu_alpha``) is fixed, not learned. Input (B, ...) is treated as (B, -1).

    JSON: writes ``prelu_dice_param{alpha, eps}`` and also ``elu_alpha`` (HugeCTR's reader
    expects that key); reads either.
    """

    type_name = "PReLU_Dice"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.alpha = hp_float(self, "elu_alpha")
        self.eps = hp_float(self, "eps")
        if len(self.input_shapes[0]) < 2:
            self.fail("bottom[0] shape", "a tensor of rank >= 2", self.input_shapes[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(dim=0, keepdim=True)
        var = (flat * flat).mean(dim=0, keepdim=True) - mean * mean
        p = torch.sigmoid((flat - mean) / torch.sqrt(var + self.eps))
        y = p * flat + (1.0 - p) * self.alpha * flat
        return y.reshape(x.shape)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        alpha = float(params.get("elu_alpha", 1.0))
        eps = float(params.get("eps", 1e-5))
        return {"prelu_dice_param": {"alpha": alpha, "elu_alpha": alpha, "eps": eps}}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        w = f"{where}.prelu_dice_param"
        obj = json_obj(entry, "prelu_dice_param", where)
        key = "alpha" if "alpha" in obj else "elu_alpha"
        return {"elu_alpha": float(json_num(obj, key, w)), "eps": float(json_num(obj, "eps", w))}


@LAYERS.register("Dropout")
class Dropout(_SameShape):
    """Inverted dropout: in training, zero with prob ``dropout_rate`` and scale kept values by
    1/(1-rate); identity in eval. Uses torch's RNG (the trainer seeds it). JSON: ``rate``."""

    type_name = "Dropout"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.rate = hp_float(self, "dropout_rate")
        if not 0.0 <= self.rate < 1.0:
            self.fail("dropout_rate", "a value in [0, 1)", self.rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, p=self.rate, training=self.training)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"rate": float(params.get("dropout_rate", 0.5))}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"dropout_rate": float(json_num(entry, "rate", where, 0.5))}


@LAYERS.register("Softmax")
class Softmax(Layer):
    """Softmax over the last dim. With a second bottom (mask, broadcastable to the input, e.g.
    (B, 1, 1, S) or (B, 1, S, S)): softmax(x * factor - (1 - mask) * 10000) as HugeCTR's
    masked softmax. JSON: ``factor``."""

    type_name = "Softmax"
    num_inputs = (1, 2)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.factor = hp_float(self, "factor")
        if len(self.input_shapes) == 2:
            x, m = self.input_shapes
            if len(m) != len(x) or m[-1] != x[-1]:
                self.fail("bottom[1] shape", f"a mask of rank {len(x)} ending in {x[-1]}", m)

    def output_shapes(self) -> list[Shape]:
        return [self.input_shapes[0]]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return torch.softmax(x, dim=-1)
        scores = x * self.factor - (1.0 - mask.to(x.dtype)) * 10000.0
        return torch.softmax(scores, dim=-1)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"factor": float(params.get("factor", 1.0))}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"factor": float(json_num(entry, "factor", where, 1.0))}


@LAYERS.register("Cast")
class Cast(_SameShape):
    """fp32 <-> low precision. float32 input -> the autocast dtype when autocast is on for the
    input's device (e.g. bfloat16), else float16; float16/bfloat16 input -> float32."""

    type_name = "Cast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            dev = x.device.type
            if torch.is_autocast_enabled(dev):
                return x.to(torch.get_autocast_dtype(dev))
            return x.to(torch.float16)
        return x.to(torch.float32)


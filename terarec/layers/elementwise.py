"""Element-wise multi-input layers (Add, Sub, ElementwiseMultiply) and ``WeightMultiply``.

Owns shape checks (all inputs the same shape) and the WeightMultiply weight W (S, V):
out[b, i*V + j] = x[b, i] * W[i, j].
"""

from __future__ import annotations

from typing import Any

import torch

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import (
    hp_init,
    hp_int_list,
    inits_from_json,
    inits_to_json,
    json_int_list,
    make_param,
    require_rank,
    require_same_shapes,
)


class _SameShapeN(Layer):
    num_inputs = (2, None)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        require_same_shapes(self)

    def output_shapes(self) -> list[Shape]:
        return [self.input_shapes[0]]


@LAYERS.register("Add")
class Add(_SameShapeN):
    """Element-wise sum of N same-shape inputs."""

    type_name = "Add"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@LAYERS.register("Sub")
class Sub(_SameShapeN):
    """x - y of two same-shape inputs."""

    type_name = "Sub"
    num_inputs = (2, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x - y


@LAYERS.register("ElementwiseMultiply", "DotProduct")
class ElementwiseMultiply(_SameShapeN):
    """Hadamard product of N same-shape inputs (old name: DotProduct)."""

    type_name = "ElementwiseMultiply"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


@LAYERS.register("WeightMultiply", "Multiply")
class WeightMultiply(Layer):
    """out[b, i*V + j] = x[b, i] * W[i, j] with W (S, V) (old name: Multiply).

    Args (params): weight_dims = [S, V], weight_init_type (Default: fan_avg uniform).
    Shapes: (B, S) (or (B, S, 1)) -> (B, S * V). JSON: ``weight_dims``, ``weight_init``.
    """

    type_name = "WeightMultiply"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = require_rank(self, 0, (2, 3))
        dims = hp_int_list(self, "weight_dims")
        if len(dims) != 2 or min(dims) < 1:
            self.fail("weight_dims", "[S, V] with positive S, V", dims)
        s, v = dims
        per_sample = shape[1] * (shape[2] if len(shape) == 3 else 1)
        if per_sample != s:
            self.fail("weight_dims", f"S equal to the input's {per_sample} features", dims)
        self.s, self.v = s, v
        kind = hp_init(self, "weight_init_type")
        self.weight = make_param(self, kind, "wm_weight", (s, v), s, s * v)

    def output_shapes(self) -> list[Shape]:
        return [(self.input_shapes[0][0], self.s * self.v)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, self.s, 1)
        return (x * self.weight.to(x.dtype)).reshape(-1, self.s * self.v)

    def dense_weights(self) -> list[torch.Tensor]:
        return [self.weight]

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"weight_dims": [int(d) for d in params.get("weight_dims", [])]}
        inits_to_json(params, out, {"weight_init_type": "weight_init"})
        return out

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {"weight_dims": json_int_list(entry, "weight_dims", where)}
        inits_from_json(entry, where, {"weight_init_type": "weight_init"}, out)
        return out

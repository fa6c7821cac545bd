"""Factorization-machine second-order term: ``FmOrder2``."""

from __future__ import annotations

from typing import Any

import torch

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import hp_int, json_num, require_rank


@LAYERS.register("FmOrder2")
class FmOrder2(Layer):
    """0.5 * ((sum_s v_s)^2 - sum_s v_s^2) per latent dim.

    Input (B, S * out_dim) with slot s's vector at columns [s*out_dim, (s+1)*out_dim)
    (a 3D (B, S, out_dim) input is accepted too) -> (B, out_dim). JSON: ``out_dim``.
    """

    type_name = "FmOrder2"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = require_rank(self, 0, (2, 3))
        self.out_dim = hp_int(self, "out_dim", minimum=1)
        width = shape[-1] if len(shape) == 3 else shape[1]
        if len(shape) == 3 and width != self.out_dim:
            self.fail("out_dim", f"the input's last dim {width}", self.out_dim)
        if len(shape) == 2 and width % self.out_dim:
            self.fail("out_dim", f"a divisor of the input width {width}", self.out_dim)

    def output_shapes(self) -> list[Shape]:
        return [(self.input_shapes[0][0], self.out_dim)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.reshape(x.shape[0], -1, self.out_dim)  # (B, S, D)
        s = v.sum(dim=1)
        return 0.5 * (s * s - (v * v).sum(dim=1))

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"out_dim": int(params.get("out_dim", 0))}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"out_dim": int(json_num(entry, "out_dim", where))}

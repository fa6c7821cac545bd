"""Reductions along one axis, keeping it as size 1: ``ReduceSum`` and ``ReduceMean``."""

from __future__ import annotations

from typing import Any

import torch

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import hp_int, json_num


class _Reduce(Layer):
    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        rank = len(self.input_shapes[0])
        self.axis = hp_int(self, "axis")
        if not 0 <= self.axis < rank:
            self.fail("axis", f"an axis in [0, {rank}) of input {self.input_shapes[0]}",
                      self.axis)
        if rank < 2 or rank > 4:
            self.fail("bottom[0] shape", "a 2D, 3D or 4D tensor", self.input_shapes[0])

    def output_shapes(self) -> list[Shape]:
        out = list(self.input_shapes[0])
        out[self.axis] = 1
        return [tuple(out)]

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"axis": int(params.get("axis", 1))}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"axis": int(json_num(entry, "axis", where))}


@LAYERS.register("ReduceSum")
class ReduceSum(_Reduce):
    """Sum along ``axis`` (keepdim). JSON: ``axis``."""

    type_name = "ReduceSum"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=self.axis, keepdim=True)


@LAYERS.register("ReduceMean")
class ReduceMean(_Reduce):
    """Mean along ``axis`` (keepdim). JSON: ``axis``."""

    type_name = "ReduceMean"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.axis, keepdim=True)

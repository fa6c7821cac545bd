"""DCN cross network: ``MultiCross`` v1 (``projection_dim`` 0) and v2 (low rank, k > 0).

v1: x_{l+1} = x0 * (x_l . w_l) + b_l + x_l, per layer w (1, N), b (1, N).
v2: x_{l+1} = x0 * ((x_l @ U_l) @ V_l + b_l) + x_l, per layer U (N, k), V (k, N), b (1, N).
Dense-file order: per layer its tensors in the order listed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import (
    FC_INITS,
    hp_init,
    hp_int,
    inits_from_json,
    inits_to_json,
    json_num,
    json_obj,
    make_param,
    require_rank,
)


@LAYERS.register("MultiCross")
class MultiCross(Layer):
    """Cross layers on a 2D (B, N) input -> (B, N).

    Args (params): num_layers (>= 1), projection_dim (0 = v1), weight_init_type,
        bias_init_type. JSON: ``mc_param{num_layers, projection_dim, weight_init?,
        bias_init?}`` (HugeCTR does not write projection_dim; we do).
    """

    type_name = "MultiCross"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        n = require_rank(self, 0, (2,))[1]
        self.num_layers = hp_int(self, "num_layers", minimum=1)
        self.k = hp_int(self, "projection_dim", minimum=0)
        w_kind = hp_init(self, "weight_init_type")
        b_kind = hp_init(self, "bias_init_type")
        self.params_list = nn.ParameterList()
        for _ in range(self.num_layers):
            if self.k == 0:
                self.params_list.append(make_param(self, w_kind, "mc_weight", (1, n), 1, n))
            else:
                self.params_list.append(
                    make_param(self, w_kind, "mc_weight", (n, self.k), n, self.k))
                self.params_list.append(
                    make_param(self, w_kind, "mc_weight", (self.k, n), self.k, n))
            self.params_list.append(make_param(self, b_kind, "mc_bias", (1, n), 1, n))

    def output_shapes(self) -> list[Shape]:
        return [self.input_shapes[0]]

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        per = 2 if self.k == 0 else 3
        for layer in range(self.num_layers):
            ps = [self.params_list[layer * per + j].to(x0.dtype) for j in range(per)]
            if self.k == 0:
                w, b = ps
                x = x0 * (x * w).sum(dim=1, keepdim=True) + b + x
            else:
                u, v, b = ps
                x = x0 * ((x @ u) @ v + b) + x
        return x

    def dense_weights(self) -> list[torch.Tensor]:
        return list(self.params_list)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        mc: dict[str, Any] = {"num_layers": int(params.get("num_layers", 0)),
                              "projection_dim": int(params.get("projection_dim", 0))}
        inits_to_json(params, mc, FC_INITS)
        return {"mc_param": mc}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        w = f"{where}.mc_param"
        mc = json_obj(entry, "mc_param", where)
        out: dict[str, Any] = {"num_layers": int(json_num(mc, "num_layers", w)),
                               "projection_dim": int(json_num(mc, "projection_dim", w, 0))}
        inits_from_json(mc, w, FC_INITS, out)
        return out

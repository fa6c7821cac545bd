"""DCN cross network: ``MultiCross`` v1 (``projection_dim`` 0) and v2 (low rank, k > 0).

v1: x_{l+1} = x0 * (x_l . w_l) + b_l + x_l, per layer w (1, N), b (1, N).
v2: x_{l+1} = x0 * ((x_l @ U_l) @ V_l + b_l) + x_l, per layer U (N, k), V (k, N), b (1, N).
Dense-file order: per layer its tensors in the order listed.

On CUDA with the Triton kernels (v2 only), the whole stack is one autograd function
(:class:`_CrossStack`): the GEMMs stay cuBLAS calls, the elementwise update of each layer is
one Triton pass forward (:func:`terarec.kernels.cross_forward`) and one backward
(:func:`terarec.kernels.cross_backward`, which also accumulates ``x0``'s gradient over the
layers in place), and ``x``'s gradient takes the matmul path in the GEMM's epilogue
(``addmm``). Elsewhere, and as the oracle (``TERAREC_KERNELS=torch`` / ``use_triton(False)``),
the plain torch expression.
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
        if self.k > 0 and _fused_ok(x0):
            return _CrossStack.apply(x0, *[p.to(x0.dtype) for p in self.params_list])
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


# Tests set this to run the fused stack on CPU tensors (with the torch twins, or with Triton
# through its interpreter: TRITON_INTERPRET=1 and use_triton(True)).
FUSED_ON_CPU = False
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fused_ok(x0: torch.Tensor) -> bool:
    """The fused stack runs on CUDA where the Triton kernels are selected, for a float32 /
    bf16 / fp16 input that autocast leaves alone (the layer then computes in its dtype, as
    the eager expression does)."""
    if x0.dtype not in _FUSED_DTYPES:
        return False
    dev = x0.device.type
    if torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) != x0.dtype:
        return False
    if FUSED_ON_CPU and not x0.is_cuda:
        return True
    if not x0.is_cuda:
        return False
    from terarec.kernels import backend_for

    return backend_for(x0) == "triton"


class _CrossStack(torch.autograd.Function):
    """``num_layers`` low-rank cross layers ``x_{l+1} = x0 * ((x_l @ U_l) @ V_l + b_l) + x_l``
    with hand-written backward (inputs: ``x0`` then ``U, V, b`` per layer, one dtype).

    Saved: ``x_l``, ``h_l = x_l @ U_l`` and ``u_l = h_l @ V_l`` (what eager autograd keeps,
    with ``u`` in place of ``u + b``). Backward per layer, top down, with ``g`` the gradient
    of ``x_{l+1}``: one kernel pass gives ``du = g * x0``, the bias gradient and
    ``dx0 += g * (u + b)`` (plus ``g`` itself at layer 0, where ``x_0 = x0``); then
    ``dV = h^T du``, ``dh = du V^T``, ``dU = x_l^T dh`` and ``g <- g + dh U^T`` in one addmm.
    """

    @staticmethod
    def forward(ctx, x0, *params):  # noqa: ANN001, ANN205
        from terarec.kernels import cross_forward

        n_layers = len(params) // 3
        xs, hs, us = [], [], []
        x = x0
        with torch.autocast(x0.device.type, enabled=False):
            for layer in range(n_layers):
                w_u, w_v, b = params[3 * layer:3 * layer + 3]
                h = x @ w_u
                u = h @ w_v
                xs.append(x)
                hs.append(h)
                us.append(u)
                x = cross_forward(x0, u, b, x)
        ctx.n_layers = n_layers
        ctx.save_for_backward(x0, *xs[1:], *hs, *us, *params)
        return x

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        from terarec.kernels import cross_backward

        n = ctx.n_layers
        saved = ctx.saved_tensors
        x0 = saved[0]
        xs = [x0, *saved[1:n]]
        hs, us, params = saved[n:2 * n], saved[2 * n:3 * n], saved[3 * n:]
        need = ctx.needs_input_grad
        grads: list[torch.Tensor | None] = [None] * len(params)
        g = grad.to(x0.dtype).contiguous()
        dx0 = None
        for layer in reversed(range(n)):
            w_u, w_v, b = params[3 * layer:3 * layer + 3]
            du, dx0, db = cross_backward(g, x0, us[layer], b, dx0, add_grad=layer == 0)
            dh = du @ w_v.t()
            if need[1 + 3 * layer]:
                grads[3 * layer] = xs[layer].t() @ dh
            if need[2 + 3 * layer]:
                grads[3 * layer + 1] = hs[layer].t() @ du
            if need[3 + 3 * layer]:
                grads[3 * layer + 2] = db.reshape(b.shape)
            if layer == 0:  # x_0 = x0: dx0 already holds the cross terms and the residual g
                dx0.addmm_(dh, w_u.t())
            elif layer == n - 1:  # the incoming gradient is not ours to overwrite
                g = torch.addmm(g, dh, w_u.t())
            else:
                g.addmm_(dh, w_u.t())
        return (dx0 if need[0] else None, *grads)

"""The ``MLP`` layer: a chain of fully connected layers with per-layer activation and bias.

Owns HugeCTR's MLP semantics: ``num_outputs`` lists the widths, ``activations`` (or one
``act_type`` for every layer) picks "Relu"/"Non" per layer, ``biases`` (or one ``use_bias``)
says which layers have a bias. Weights per layer W_i (in, out) then b_i (1, out), in that
order in the dense model file. A second bottom (HugeCTR's FP16 Interaction "grad" top) is
accepted and ignored.

On CUDA each 2-D layer is one cuBLAS call with the bias (and ReLU) in its epilogue
(``addmm`` / ``_addmm_activation``, in the autocast dtype); elsewhere, and as the oracle, the
plain matmul + bias + relu chain.
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
    hp_int_list,
    inits_from_json,
    inits_to_json,
    json_get,
    json_obj,
    make_param,
    pget,
    require_rank,
)


@LAYERS.register("MLP")
class MLP(Layer):
    """Stack of FC(+ReLU) layers.

    Args (params): num_outputs (list, required), act_type, activations, use_bias, biases,
        weight_init_type, bias_init_type (num_output is informational: the last width).
    Shapes: (B, K) -> (B, num_outputs[-1]); 3D (B, S, K) -> (B, S, num_outputs[-1]).

    Example:
        >>> m = MLP({"num_outputs": [4, 1], "activations": ["Relu", "Non"]}, [(8, 3)])
        >>> m(torch.zeros(2, 3)).shape
        torch.Size([2, 1])
    """

    type_name = "MLP"
    num_inputs = (1, 2)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = require_rank(self, 0, (2, 3))
        widths = hp_int_list(self, "num_outputs")
        if not widths and "num_output" in self.params:
            widths = [int(self.params["num_output"])]
        if not widths or any(w < 1 for w in widths):
            self.fail("num_outputs", "a non-empty list of positive widths", widths)
        n = len(widths)
        acts = hp(self, "activations") or [hp(self, "act_type")] * n
        biases = hp(self, "biases") or [bool(hp(self, "use_bias"))] * n
        if len(acts) != n:
            self.fail("activations", f"{n} entries (one per layer)", acts)
        if len(biases) != n or not all(isinstance(b, bool) for b in biases):
            self.fail("biases", f"{n} booleans (one per layer)", biases)
        self.acts = [hp_act(self, a, "activations") for a in acts]
        self.use_biases = list(biases)
        self.widths = widths
        w_kind = hp_init(self, "weight_init_type")
        b_kind = hp_init(self, "bias_init_type")
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self._order: list[nn.Parameter] = []
        self._is_bias: list[bool] = []
        k = shape[-1]
        for width, has_bias in zip(widths, biases):
            w = make_param(self, w_kind, "fc_weight", (k, width), k, width)
            self.weights.append(w)
            self._order.append(w)
            self._is_bias.append(False)
            if has_bias:
                b = make_param(self, b_kind, "fc_bias", (1, width), k, width)
                self.biases.append(b)
                self._order.append(b)
                self._is_bias.append(True)
            k = width

    def output_shapes(self) -> list[Shape]:
        return [(*self.input_shapes[0][:-1], self.widths[-1])]

    def forward(self, x: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dim() == 2 and _fused_ok(x):
            return self._forward_fused(x)
        bi = 0
        for i, w in enumerate(self.weights):
            w = w.to(x.dtype)
            if self.use_biases[i]:
                b = self.biases[bi].to(x.dtype).view(-1)
                bi += 1
                # one GEMM with the bias as its C operand for 2-D inputs (no extra pass)
                x = torch.addmm(b, x, w) if x.dim() == 2 else torch.matmul(x, w) + b
            else:
                x = torch.matmul(x, w)
            if self.acts[i] == "Relu":
                x = torch.relu(x)
        return x

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        with torch.autocast("cuda", enabled=False):
            x = x.to(dt)
            order = list(self._order)  # w_0, [b_0], w_1, ... (HugeCTR's file order)
            side = None
            if CAST_IN_ONE and any(p.dtype != dt for p in order):
                side = _side_stream(x.device) \
                    if WGRAD_SIDE_STREAM and torch.is_grad_enabled() else None
                order = _cast_all(dt, order, side)
            else:
                order = [p.to(dt) for p in order]
            params = [p.view(-1) if is_bias else p for p, is_bias in zip(order, self._is_bias)]
            w0 = params[0]
            x, params[0] = _aligned_k(x, params[0])
            # a weight's gradient may be made on the side stream where its consumer (the
            # cast's backward) runs there: every weight but a padded first one
            spec = tuple((a == "Relu", b, side is not None and (i > 0 or params[0] is w0))
                         for i, (a, b) in enumerate(zip(self.acts, self.use_biases)))
            return _LinearChain.apply(x, spec, *params)

    def dense_weights(self) -> list[torch.Tensor]:
        return list(self._order)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        widths = [int(w) for w in pget(params, "num_outputs")]
        mlp: dict[str, Any] = {
            "num_output": int(params.get("num_output", widths[-1] if widths else 1)),
            "num_outputs": widths,
        }
        biases = pget(params, "biases")
        if biases:
            mlp["biases"] = [bool(b) for b in biases]
        else:
            mlp["use_bias"] = bool(pget(params, "use_bias"))
        acts = pget(params, "activations")
        if acts:
            mlp["activations"] = [act_to_json(a) for a in acts]
        else:
            mlp["activation"] = act_to_json(pget(params, "act_type"))
        inits_to_json(params, mlp, FC_INITS)
        return {"mlp_param": mlp}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        w = f"{where}.mlp_param"
        mlp = json_obj(entry, "mlp_param", where)
        out: dict[str, Any] = {"num_output": int(json_get(mlp, "num_output", w))}
        out["num_outputs"] = [int(v) for v in json_get(mlp, "num_outputs", w, [out["num_output"]])]
        for src, dst in (("use_bias", "use_bias"), ("biases", "biases"),
                         ("activation", "act_type"), ("activations", "activations")):
            if src in mlp:
                out[dst] = mlp[src]
        inits_from_json(mlp, w, FC_INITS, out)
        return out


def _aligned_k(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x @ w`` with the inner size padded by zero columns of ``x`` / rows of ``w`` to a
    multiple of 8 for 16-bit types (unchanged products). cuBLAS runs a K of 13 (Criteo's
    dense features) and the weight gradient's N of 13 on slow unaligned fallback kernels."""
    k = x.shape[-1]
    pad = -k % 8
    if pad == 0 or x.element_size() != 2:
        return x, w
    return (torch.nn.functional.pad(x, (0, pad)),
            torch.nn.functional.pad(w, (0, 0, 0, pad)))


def _fused_ok(x: torch.Tensor) -> bool:
    """``TERAREC_KERNELS=torch`` / ``use_triton(False)`` select the plain chain (the oracle)."""
    from terarec.kernels import backend_for

    return backend_for(x) == "triton"


# The ReLU backward of a layer inside the chain runs in the epilogue of the GEMM above it
# (kernels.linear_relu_dgrad) for 16-bit types when the upper layer is at least this wide;
# narrower, cuBLAS's GEMM and then relu_bias_backward were faster (H200: 128 -> 256 0.066 ms
# vs 0.085; 1024 -> 1024 0.307 vs 0.283). False: never.
FUSED_DGRAD = True
FUSED_DGRAD_MIN_WIDTH = 256
# Upper layers at most this wide (a logit layer: width 1) fused as outer products (cuBLAS's
# gemmk1 + the separate pass: ~50 us per DLRM step on an H200). 0: off. H200 DLRM step
# (step_parts.py, 2026-11-29): with CAST_IN_ONE 3.73 ms vs 3.78-3.79 for neither.
FUSED_DGRAD_OUTER_MAX = 8


# The layer's weights and biases cast to the autocast dtype by one multi-tensor copy (forward)
# and their gradients back by another (backward) instead of one cast kernel per tensor each
# way (16 + 16 small launches per DLRM step). H200 DLRM step: 3.77 ms alone vs 3.78-3.79 off.
CAST_IN_ONE = True


# The weight gradients of the fused chain (bf16 autocast with CAST_IN_ONE) made on a side
# stream, next to the dgrad chain and what follows it on the main stream (the interaction
# backward, the sparse backward: memory-bound work; on several GPUs the gradient exchange).
# The parameter casts run on that stream too, so their backward and the gradients'
# accumulation wait only for it; autograd joins it at the end of the backward pass.
# H200 DLRM step (2026-11-29, step_parts.py): 3.57-3.58 ms vs 3.63 without; bitwise the same
# gradients (tests/layers/test_mlp_chain.py).
WGRAD_SIDE_STREAM = True
_SIDE: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    got = _SIDE.get(device)
    if got is None:
        got = _SIDE[device] = torch.cuda.Stream(device)
    return got


def _cast_all(dtype: torch.dtype, params: list[torch.Tensor],
              side: torch.cuda.Stream | None) -> list[torch.Tensor]:
    """``_CastAll`` on the current stream, or on ``side`` (forked from and joined back to the
    current stream; the casts are kept alive for the current stream's uses)."""
    if side is None:
        return list(_CastAll.apply(dtype, *params))
    main = torch.cuda.current_stream(params[0].device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        out = list(_CastAll.apply(dtype, *params))
    main.wait_stream(side)
    for t in out:
        t.record_stream(main)
    return out


class _CastAll(torch.autograd.Function):
    """``[p.to(dtype) for p in params]`` as one ``_foreach_copy_`` each way."""

    @staticmethod
    def forward(ctx, dtype, *params):  # noqa: ANN001, ANN205
        out = [torch.empty_like(p, dtype=dtype) for p in params]
        torch._foreach_copy_(out, list(params))
        ctx.dtypes = [p.dtype for p in params]
        ctx.set_materialize_grads(False)  # unused outputs: None, no zero tensor to cast
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001, ANN205
        todo = [i for i, g in enumerate(grads) if g is not None]
        out: list[torch.Tensor | None] = [None] * len(grads)
        dst = [torch.empty_like(grads[i], dtype=ctx.dtypes[i]) for i in todo]
        if dst:
            torch._foreach_copy_(dst, [grads[i] for i in todo])
        for i, d in zip(todo, dst):
            out[i] = d
        return (None, *out)


class _LinearChain(torch.autograd.Function):
    """The layers of one MLP as one autograd node: each layer is one cuBLAS call with its bias
    (and ReLU) in the epilogue; the backward walks the layers top-down by hand, so the ReLU
    mask and bias gradient of a layer come from the GEMM that makes its gradient.

    ``spec``: (relu, has_bias, wgrad on the side stream) per layer; ``params``: w_0, [b_0],
    w_1, [b_1], ... with w_i (in, out) and b_i (out,), all in ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx, x, spec, *params):  # noqa: ANN001, ANN205
        outs, where = [], []  # layer outputs; index of w_i in params
        h, p = x, 0
        for relu, has_bias, _ in spec:
            w = params[p]
            if has_bias:
                b = params[p + 1]
                h = torch._addmm_activation(b, h, w) if relu else torch.addmm(b, h, w)
            else:
                h = h.mm(w)
                h = torch.relu(h) if relu else h
            where.append(p)
            p += 2 if has_bias else 1
            outs.append(h)
        ctx.spec, ctx.where = spec, where
        ctx.save_for_backward(x, *params, *outs)
        return h

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        spec, where = ctx.spec, ctx.where
        saved = ctx.saved_tensors
        x, n_params = saved[0], len(ctx.needs_input_grad) - 2
        params, outs = saved[1:1 + n_params], saved[1 + n_params:]
        grads: list[torch.Tensor | None] = [None] * n_params
        g, db = _activation_grad(grad.contiguous(), outs[-1], *spec[-1][:2])
        for i in reversed(range(len(spec))):
            w = params[where[i]]
            if spec[i][1]:
                grads[where[i] + 1] = db
            if ctx.needs_input_grad[2 + where[i]]:
                act = x if i == 0 else outs[i - 1]
                grads[where[i]] = _wgrad(act, g, spec[i][2])
            if i == 0:
                dx = g.mm(w.t()) if ctx.needs_input_grad[0] else None
                return (dx, None, *grads)
            relu, has_bias, _ = spec[i - 1]
            width = g.shape[1]
            if FUSED_DGRAD and relu and has_bias and g.element_size() == 2 and _fused_ok(g) \
                    and (width >= FUSED_DGRAD_MIN_WIDTH or width <= FUSED_DGRAD_OUTER_MAX):
                from terarec.kernels import linear_relu_dgrad

                g, db = linear_relu_dgrad(g, w, outs[i - 1])
            else:
                g, db = _activation_grad(g.mm(w.t()), outs[i - 1], relu, has_bias)
        raise AssertionError("unreachable: the loop returns at layer 0")


def _wgrad(act: torch.Tensor, g: torch.Tensor, on_side: bool) -> torch.Tensor:
    """``act^T g``; ``on_side``: on the side stream, after what the current stream has
    queued (both inputs kept alive for it)."""
    if not on_side:
        return act.t().mm(g)
    side = _side_stream(g.device)
    side.wait_stream(torch.cuda.current_stream(g.device))
    with torch.cuda.stream(side):
        out = act.t().mm(g)
    act.record_stream(side)
    g.record_stream(side)
    return out


def _activation_grad(grad: torch.Tensor, y: torch.Tensor, relu: bool,
                     has_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pre-activation gradient, bias gradient or None) of a layer with output ``y``."""
    if relu and has_bias:
        from terarec.kernels import relu_bias_backward

        return relu_bias_backward(grad, y)  # one pass: mask and column sums
    if relu:
        return torch.ops.aten.threshold_backward(grad, y, 0), None
    return grad, grad.sum(0, dtype=torch.float32).to(grad.dtype) if has_bias else None

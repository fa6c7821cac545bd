"""Normalization layers: ``BatchNorm`` (cuDNN semantics, running stats) and ``LayerNorm``.

Owns the per-feature statistics, gamma/beta weights (dense-file order: gamma, beta) and the
BatchNorm running mean/variance that HugeCTR keeps in ``{prefix}_dense_{iter}.model.ntp.json``.
"""

from __future__ import annotations

from typing import Any

import torch

from terarec.errors import ConfigError
from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import (
    NORM_INITS,
    hp_float,
    hp_init,
    inits_from_json,
    inits_to_json,
    json_num,
    json_obj,
    make_param,
    require_rank,
    upcast,
)


def _gamma_beta(layer: Layer, n: int) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    gamma = make_param(layer, hp_init(layer, "gamma_init_type"), "gamma", (n,), 1, n)
    beta = make_param(layer, hp_init(layer, "beta_init_type"), "beta", (n,), 1, n)
    return gamma, beta


@LAYERS.register("BatchNorm")
class BatchNorm(Layer):
    """Batch normalization over the batch dim of a (B, N) input (per feature).

    Training: normalize with the batch mean and biased variance; update running stats as cuDNN
    does: running = (1 - factor) * running + factor * batch_stat, the variance term unbiased
    (factor = 1.0, HugeCTR's default, keeps only the latest batch). Eval: use running stats.

    Non-trainable state (``non_trainable()``): ``{"mean": [...], "var": [...]}`` - the keys of
    one BatchNorm entry of HugeCTR's ``.ntp.json`` (``{"layers": [{"type": "BatchNorm",
    "mean": [...], "var": [...]}, ...]}``; the graph adds ``"type"``). Running stats start at
    mean 0, var 1.
    """

    type_name = "BatchNorm"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = require_rank(self, 0, (2,))
        self.factor = hp_float(self, "factor")
        self.eps = hp_float(self, "eps")
        if not 0.0 <= self.factor <= 1.0:
            self.fail("factor", "a value in [0, 1]", self.factor)
        if self.eps <= 0:
            self.fail("eps", "a positive value", self.eps)
        n = shape[1]
        self.gamma, self.beta = _gamma_beta(self, n)
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def output_shapes(self) -> list[Shape]:
        return [self.input_shapes[0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        if self.training:
            mean = xf.mean(dim=0)
            var = xf.var(dim=0, unbiased=False)
            with torch.no_grad():
                b = xf.shape[0]
                unbiased = var * (b / max(b - 1, 1))
                self.running_mean.mul_(1 - self.factor).add_(self.factor * mean.detach())
                self.running_var.mul_(1 - self.factor).add_(self.factor * unbiased.detach())
        else:
            mean, var = self.running_mean, self.running_var
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.gamma + self.beta
        return y.to(x.dtype)

    def dense_weights(self) -> list[torch.Tensor]:
        return [self.gamma, self.beta]

    def non_trainable(self) -> dict[str, list[float]]:
        return {"mean": self.running_mean.tolist(), "var": self.running_var.tolist()}

    def load_non_trainable(self, state: dict[str, list[float]]) -> None:
        n = self.running_mean.numel()
        for key, buf in (("mean", self.running_mean), ("var", self.running_var)):
            values = state.get(key)
            if values is None or len(values) != n:
                got = None if values is None else len(values)
                raise ConfigError(f"BatchNorm layer {self.layer_name!r}: non-trainable {key}",
                                  f"a list of {n} floats", got)
            buf.copy_(torch.tensor(values, dtype=buf.dtype, device=buf.device))

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        bn: dict[str, Any] = {"factor": float(params.get("factor", 1.0)),
                              "eps": float(params.get("eps", 1e-5))}
        inits_to_json(params, bn, NORM_INITS)
        return {"bn_param": bn}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        w = f"{where}.bn_param"
        bn = json_obj(entry, "bn_param", where)
        out: dict[str, Any] = {"factor": float(json_num(bn, "factor", w)),
                               "eps": float(json_num(bn, "eps", w))}
        inits_from_json(bn, w, NORM_INITS, out)
        return out


@LAYERS.register("LayerNorm")
class LayerNorm(Layer):
    """Layer normalization over the last dim of a 2D/3D/4D input: gamma, beta of size D."""

    type_name = "LayerNorm"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = require_rank(self, 0, (2, 3, 4))
        self.eps = hp_float(self, "eps")
        if self.eps <= 0:
            self.fail("eps", "a positive value", self.eps)
        self.gamma, self.beta = _gamma_beta(self, shape[-1])

    def output_shapes(self) -> list[Shape]:
        return [self.input_shapes[0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        mean = xf.mean(dim=-1, keepdim=True)
        var = xf.var(dim=-1, unbiased=False, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.gamma + self.beta
        return y.to(x.dtype)

    def dense_weights(self) -> list[torch.Tensor]:
        return [self.gamma, self.beta]

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        ln: dict[str, Any] = {"eps": float(params.get("eps", 1e-5))}
        inits_to_json(params, ln, NORM_INITS)
        return {"ln_param": ln}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        w = f"{where}.ln_param"
        ln = json_obj(entry, "ln_param", where)
        out: dict[str, Any] = {"eps": float(json_num(ln, "eps", w))}
        inits_from_json(ln, w, NORM_INITS, out)
        return out

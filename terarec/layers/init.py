"""Weight initializers keyed by HugeCTR ``Initializer_t`` names.

Owns only how a fresh tensor is filled: ``"Default"`` (whose meaning depends on the weight's
*role*, e.g. an FC weight vs. an FC bias), ``"Uniform"``, ``"XavierNorm"``, ``"XavierUniform"``
and ``"Zero"``. Every draw comes from the caller's ``torch.Generator`` (or the global RNG when
it is None), so a seed reproduces the weights. Layers decide roles and fans; this module does
not know about layers.

Default per role (HugeCTR §10):
    fc_weight   truncated normal, sigma = sqrt(2/(in+out))/0.8796, clipped at +-2 sigma
    fc_bias     truncated normal, sigma = sqrt(1/out), clipped at +-2 sigma
    mc_weight   normal(0, sqrt(2/(in+out))) (not truncated)
    mc_bias     zeros
    wm_weight   uniform(+-sqrt(3/((in+out)/2)))
    gamma       ones;  beta  zeros
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from terarec.utils.registry import Registry

InitFn = Callable[[str, tuple[int, ...], int, int, "torch.Generator | None"], torch.Tensor]

INITIALIZERS: Registry[InitFn] = Registry("initializer")

# Normal truncated at +-2 sigma has std 0.8796 sigma; HugeCTR divides by it to keep variance.
TRUNC_STD_FACTOR = 0.87962566103423978


def _uniform(shape: tuple[int, ...], limit: float, gen: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return ((u * 2.0 - 1.0) * limit).float()


def _normal(shape: tuple[int, ...], std: float, gen: torch.Generator | None) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).float()


def truncated_normal(
    shape: tuple[int, ...], std: float, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Normal(0, std) restricted to [-2 std, 2 std] (inverse-CDF sampling, exact)."""
    lo = 0.5 * (1.0 + math.erf(-2.0 / math.sqrt(2.0)))
    hi = 1.0 - lo
    u = torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    z = torch.special.ndtri(u).clamp_(-2.0, 2.0)
    return (z * std).float()


@INITIALIZERS.register("Zero")
def _zero(role: str, shape: tuple[int, ...], fan_in: int, fan_out: int, gen) -> torch.Tensor:
    return torch.zeros(shape)


@INITIALIZERS.register("Uniform")
def _uniform_init(role: str, shape: tuple[int, ...], fan_in: int, fan_out: int, gen):
    if role.endswith("bias") or role == "beta":
        return _uniform(shape, 1.0 / max(fan_out, 1), gen)
    return _uniform(shape, 1.0 / max(fan_in + fan_out, 1), gen)


@INITIALIZERS.register("XavierUniform")
def _xavier_uniform(role: str, shape: tuple[int, ...], fan_in: int, fan_out: int, gen):
    return _uniform(shape, math.sqrt(3.0 / ((fan_in + fan_out) / 2.0)), gen)


@INITIALIZERS.register("XavierNorm")
def _xavier_norm(role: str, shape: tuple[int, ...], fan_in: int, fan_out: int, gen):
    std = math.sqrt(1.0 / ((fan_in + fan_out) / 2.0)) / TRUNC_STD_FACTOR
    return truncated_normal(shape, std, gen)


@INITIALIZERS.register("Default")
def _default(role: str, shape: tuple[int, ...], fan_in: int, fan_out: int, gen):
    if role == "fc_weight":
        return _xavier_norm(role, shape, fan_in, fan_out, gen)
    if role == "fc_bias":
        return truncated_normal(shape, math.sqrt(1.0 / max(fan_out, 1)), gen)
    if role == "mc_weight":
        return _normal(shape, math.sqrt(2.0 / (fan_in + fan_out)), gen)
    if role == "wm_weight":
        return _xavier_uniform(role, shape, fan_in, fan_out, gen)
    if role == "gamma":
        return torch.ones(shape)
    if role in ("beta", "mc_bias"):
        return torch.zeros(shape)
    if role == "rnn_weight":
        return _uniform(shape, 1.0 / math.sqrt(max(fan_out, 1)), gen)
    raise ValueError(f"unknown initializer role {role!r}")


def init_tensor(
    kind: str,
    role: str,
    shape: tuple[int, ...],
    fan_in: int,
    fan_out: int,
    generator: torch.Generator | None = None,
    where: str = "",
) -> torch.Tensor:
    """A float32 tensor of ``shape`` filled by initializer ``kind`` for a weight of ``role``.

    Example:
        >>> w = init_tensor("Default", "fc_weight", (4, 3), 4, 3)
        >>> tuple(w.shape)
        (4, 3)
    """
    fn = INITIALIZERS.get(kind, where or "weight_init_type")
    return fn(role, tuple(shape), int(fan_in), int(fan_out), generator).contiguous()

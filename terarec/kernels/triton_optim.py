"""Triton sparse optimizer updates on unique rows, in place (hugectr_reference.md §5.2).

``apply_rule`` is the per-element math of every rule behind a constexpr ``OPT`` code; it is
shared by the stand-alone update kernel here and by the fused backward+update kernel of
:mod:`terarec.kernels.triton_grad`. Weights may be float32 or bfloat16 (then the math runs in
float32 and the result is rounded to nearest or stochastically); states are float32.

Imported only through :mod:`terarec.kernels.select` (needs Triton).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C


@triton.jit
def sr_bf16(x, seed, offs):
    """float32 tensor -> bfloat16, rounded up with probability = distance (stochastic)."""
    rnd = tl.randint(seed, offs.to(tl.int32)).to(tl.int32) & 0xFFFF
    bits = (x.to(tl.int32, bitcast=True) + rnd) & -65536
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def apply_rule(w_ptr, s1_ptr, s2_ptr, offs, mask, g, lr, h1, h2, h3, seed,
               OPT: tl.constexpr, SR: tl.constexpr):
    """Update ``w[offs]`` (and its states) with gradient ``g`` (float32, shaped like offs)."""
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if OPT == 1:  # SGD
        w = w - lr * g
    elif OPT == 2:  # MomentumSGD: m = f*m - lr*g; w += m
        m = h1 * tl.load(s1_ptr + offs, mask=mask, other=0.0) - lr * g
        tl.store(s1_ptr + offs, m, mask=mask)
        w = w + m
    elif OPT == 3:  # Nesterov: a' = mu*a - lr*g; w += -mu*a + (1+mu)*a'
        a = tl.load(s1_ptr + offs, mask=mask, other=0.0)
        a_new = h1 * a - lr * g
        tl.store(s1_ptr + offs, a_new, mask=mask)
        w = w - h1 * a + (1.0 + h1) * a_new
    elif OPT == 4:  # AdaGrad: s += g^2; w -= lr*g/(eps + sqrt(s))
        s = tl.load(s1_ptr + offs, mask=mask, other=0.0) + g * g
        tl.store(s1_ptr + offs, s, mask=mask)
        w = w - lr * g / (h1 + tl.sqrt(s))
    elif OPT == 5:  # Adam, lr = bias-corrected step size
        m = h1 * tl.load(s1_ptr + offs, mask=mask, other=0.0) + (1.0 - h1) * g
        v = h2 * tl.load(s2_ptr + offs, mask=mask, other=0.0) + (1.0 - h2) * g * g
        tl.store(s1_ptr + offs, m, mask=mask)
        tl.store(s2_ptr + offs, v, mask=mask)
        w = w - lr * m / (tl.sqrt(v) + h3)
    elif OPT == 6:  # Ftrl (n, z), h1 = lambda1, h2 = lambda2
        n = tl.load(s1_ptr + offs, mask=mask, other=0.0)
        z = tl.load(s2_ptr + offs, mask=mask, other=0.0)
        n_new = n + g * g
        sq_new = tl.sqrt(n_new)
        z = z + g + (tl.sqrt(n) - sq_new) * w / lr
        tl.store(s1_ptr + offs, n_new, mask=mask)
        tl.store(s2_ptr + offs, z, mask=mask)
        sign = tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0))
        shrunk = (h1 * sign - z) / (sq_new / lr + h2)
        w = tl.where(tl.abs(z) > h1, shrunk, 0.0)
    if SR:
        tl.store(w_ptr + offs, sr_bf16(w, seed, offs), mask=mask)
    else:
        tl.store(w_ptr + offs, w.to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _update_kernel(w_ptr, s1_ptr, s2_ptr, rows_ptr, g_ptr, n_rows, D, lr, h1, h2, h3, seed,
                   OPT: tl.constexpr, SR: tl.constexpr, BLOCK_U: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    u = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    umask = u < n_rows
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = umask[:, None] & (d < D)[None, :]
    row = tl.load(rows_ptr + u, mask=umask, other=0)
    g = tl.load(g_ptr + u[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    apply_rule(w_ptr, s1_ptr, s2_ptr, row[:, None] * D + d[None, :], mask, g, lr, h1, h2, h3,
               seed, OPT=OPT, SR=SR)


@triton.jit
def _sr_kernel(x_ptr, out_ptr, n, seed, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, sr_bf16(x, seed, offs), mask=mask)


def state_pointers(states: Sequence[torch.Tensor], weight: torch.Tensor) -> tuple:
    """The two state arguments of a kernel (the weight stands in for missing ones)."""
    s = [*states, weight, weight]
    return s[0], s[1]


def use_sr(weight: torch.Tensor, stochastic_rounding: bool) -> bool:
    return bool(stochastic_rounding) and weight.dtype == torch.bfloat16


def run_update(code: int, weight: torch.Tensor, states: Sequence[torch.Tensor],
               rows: torch.Tensor, grad: torch.Tensor, scalars: tuple[float, float, float, float],
               stochastic_rounding: bool, seed: int | None) -> None:
    """Launch the update kernel of rule ``code`` on unique ``rows``."""
    C.check_update(weight, rows, grad)
    C.check_states(code, states, weight)
    n, dim = rows.numel(), weight.shape[1]
    if n == 0 or dim == 0:
        return
    grad = grad.contiguous()
    s1, s2 = state_pointers(states, weight)
    block_d = min(triton.next_power_of_2(dim), 256)
    block_u = max(1, min(64, 4096 // block_d))
    sr = use_sr(weight, stochastic_rounding)
    seed = (C.random_seed() if seed is None else seed) if sr else 0
    grid = (triton.cdiv(n, block_u), triton.cdiv(dim, block_d))
    lr, h1, h2, h3 = scalars
    _update_kernel[grid](weight, s1, s2, rows, grad, n, dim, lr, h1, h2, h3, seed, OPT=code,
                         SR=sr, BLOCK_U=block_u, BLOCK_D=block_d, num_warps=4)


def _scalars(code: int, lr: float, f: float = 0.0, b1: float = 0.9, b2: float = 0.999,
             eps: float = 1e-7, l1: float = 0.0, l2: float = 0.0,
             step: int = 1) -> tuple[float, float, float, float]:
    return C.rule_scalars(code, lr, f, b1, b2, eps, l1, l2, step)


def sgd_update(weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float, *,
               stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """Triton twin of :func:`terarec.kernels.reference.sgd_update`."""
    run_update(C.SGD, weight, [], rows, grad, _scalars(C.SGD, lr), stochastic_rounding, seed)


def momentum_update(weight: torch.Tensor, momentum: torch.Tensor, rows: torch.Tensor,
                    grad: torch.Tensor, lr: float, momentum_factor: float, *,
                    stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """Triton twin of :func:`terarec.kernels.reference.momentum_update`."""
    run_update(C.MOMENTUM, weight, [momentum], rows, grad,
               _scalars(C.MOMENTUM, lr, f=momentum_factor), stochastic_rounding, seed)


def nesterov_update(weight: torch.Tensor, accum: torch.Tensor, rows: torch.Tensor,
                    grad: torch.Tensor, lr: float, mu: float, *,
                    stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """Triton twin of :func:`terarec.kernels.reference.nesterov_update`."""
    run_update(C.NESTEROV, weight, [accum], rows, grad, _scalars(C.NESTEROV, lr, f=mu),
               stochastic_rounding, seed)


def adagrad_update(weight: torch.Tensor, accum: torch.Tensor, rows: torch.Tensor,
                   grad: torch.Tensor, lr: float, eps: float, *,
                   stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """Triton twin of :func:`terarec.kernels.reference.adagrad_update`."""
    run_update(C.ADAGRAD, weight, [accum], rows, grad, _scalars(C.ADAGRAD, lr, eps=eps),
               stochastic_rounding, seed)


def adam_update(weight: torch.Tensor, m: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                grad: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float,
                step: int, *, stochastic_rounding: bool = False,
                seed: int | None = None) -> None:
    """Triton twin of :func:`terarec.kernels.reference.adam_update`."""
    run_update(C.ADAM, weight, [m, v], rows, grad,
               _scalars(C.ADAM, lr, b1=beta1, b2=beta2, eps=eps, step=step),
               stochastic_rounding, seed)


def ftrl_update(weight: torch.Tensor, n: torch.Tensor, z: torch.Tensor, rows: torch.Tensor,
                grad: torch.Tensor, lr: float, lambda1: float, lambda2: float, *,
                stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """Triton twin of :func:`terarec.kernels.reference.ftrl_update`."""
    run_update(C.FTRL, weight, [n, z], rows, grad, _scalars(C.FTRL, lr, l1=lambda1, l2=lambda2),
               stochastic_rounding, seed)


def stochastic_round_to_bf16(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Triton twin of :func:`terarec.kernels.reference.stochastic_round_to_bf16`."""
    x = x.contiguous()
    out = C.new_empty(x.shape, torch.bfloat16, x.device)
    n = x.numel()
    if n:
        block = 1024
        _sr_kernel[(triton.cdiv(n, block),)](x, out, n, C.random_seed() if seed is None else seed,
                                             BLOCK=block, num_warps=4)
    return out

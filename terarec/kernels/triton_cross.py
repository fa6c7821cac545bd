"""Triton kernels of the DCN cross update: one pass forward, one pass backward.

Forward ``cross_forward(x0, u, b, x)``: ``y = x0 * (u + b) + x`` (``u`` = ``(x @ U) @ V`` of a
low-rank cross layer, ``b`` its ``[N]`` bias), read once, float32 math, written in ``x``'s
dtype. Eager torch does it in three passes (``u + b``, ``* x0``, ``+ x``: 8 tensor reads or
writes instead of 4).

Backward ``cross_backward(grad, x0, u, b, dx0=None, add_grad=False)``: from one read of
``grad``, ``x0`` and ``u``:

* ``du = grad * x0`` (the gradient of ``u``, also the bias' gradient before the column sum);
* ``dx0 (+)= grad * (u + b) [+ grad]``: the cross term of ``x0``'s gradient, accumulated in
  place into the running ``dx0`` of the layers above (``dx0`` given) and, for the first layer
  (``x = x0``), with ``x``'s residual gradient ``grad`` folded in (``add_grad``);
* ``db = du.sum(0)`` as float32 partial column sums per block of ``ROWS`` rows, summed by
  torch in a fixed order (deterministic).

``x``'s own gradient through the residual is ``grad`` itself (no copy; the caller adds the
matmul path with ``addmm``). Replaces eager's ``grad * t``, ``grad * x0``, the bias sum and
autograd's accumulation of ``x0``'s gradient over the layers.

Imported only through :mod:`terarec.kernels.select` (needs Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C
from terarec.kernels.reference import _check_cross as check_cross

_BLOCK_M = 32
_BLOCK_N = 128
_ROWS = 512  # rows per program of the backward (one float32 partial bias row each)


@triton.jit
def _cross_fwd_kernel(x0_ptr, u_ptr, b_ptr, x_ptr, y_ptr, B, N, X_IS_X0: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    mask = (m < B)[:, None] & nmask[None, :]
    offs = m[:, None] * N + n[None, :]
    x0 = tl.load(x0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + n, mask=nmask, other=0.0).to(tl.float32)
    if X_IS_X0:  # the first layer (x = x0): one read less
        x = x0
    else:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = x0 * (u + b[None, :]) + x
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cross_bwd_kernel(g_ptr, x0_ptr, u_ptr, b_ptr, dx0_ptr, du_ptr, part_ptr, B, N,
                      HAS_DX0: tl.constexpr, ADD_G: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    b = tl.load(b_ptr + n, mask=nmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k in range(ROWS // BLOCK_M):
        m = pid_m.to(tl.int64) * ROWS + k * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (m < B)[:, None] & nmask[None, :]
        offs = m[:, None] * N + n[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x0 = tl.load(x0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        du = g * x0
        dx = g * (u + b[None, :])
        if HAS_DX0:  # accumulate in place into the layers above's x0 gradient
            dx = tl.load(dx0_ptr + offs, mask=mask, other=0.0).to(tl.float32) + dx
        if ADD_G:
            dx = dx + g
        tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(dx0_ptr + offs, dx.to(dx0_ptr.dtype.element_ty), mask=mask)
        acc += tl.sum(du, axis=0)
    tl.store(part_ptr + pid_m * N + n, acc, mask=nmask)


def cross_forward(x0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """Triton twin of :func:`terarec.kernels.reference.cross_forward`."""
    check_cross(x0, u, b, (x,))
    same = x is x0
    x0, u, x = x0.contiguous(), u.contiguous(), x.contiguous()
    bsz, n = x0.shape
    y = C.new_empty((bsz, n), x0.dtype, x0.device)
    if bsz and n:
        grid = (triton.cdiv(bsz, _BLOCK_M), triton.cdiv(n, _BLOCK_N))
        _cross_fwd_kernel[grid](x0, u, b.contiguous().reshape(-1), x, y, bsz, n, X_IS_X0=same,
                                BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=4)
    return y


def cross_backward(grad: torch.Tensor, x0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                   dx0: torch.Tensor | None = None, add_grad: bool = False,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.cross_backward`."""
    check_cross(x0, u, b, (grad, dx0))
    if dx0 is not None and not dx0.is_contiguous():
        raise ValueError("cross_backward: dx0 (updated in place) must be contiguous")
    grad, x0, u = grad.contiguous(), x0.contiguous(), u.contiguous()
    bsz, n = x0.shape
    du = C.new_empty((bsz, n), x0.dtype, x0.device)
    has_dx0 = dx0 is not None
    if dx0 is None:
        dx0 = C.new_empty((bsz, n), x0.dtype, x0.device)
    n_m = triton.cdiv(max(bsz, 1), _ROWS)
    part = torch.empty((n_m, n), dtype=torch.float32, device=x0.device)
    if bsz and n:
        _cross_bwd_kernel[(n_m, triton.cdiv(n, _BLOCK_N))](
            grad, x0, u, b.contiguous().reshape(-1), dx0, du, part, bsz, n, HAS_DX0=has_dx0,
            ADD_G=bool(add_grad), ROWS=_ROWS, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=4)
    else:
        part.zero_()
    return du, dx0, part.sum(0).to(x0.dtype)

"""Triton backward of a fully connected layer's ReLU and bias: one pass over the gradient.

``relu_bias_backward(grad, y)``: ``g = grad * (y > 0)`` (the ReLU backward, as
``threshold_backward``) and the bias gradient ``db = g.sum(0)`` from the same read of ``grad``
and ``y``: each program owns a column block and ``ROWS`` rows, writes its ``g`` tile and a
float32 partial column sum; the partials (``[cdiv(B, ROWS), N]``) are summed by torch in a
fixed order, so the result is deterministic. Replaces threshold_backward (read 2, write 1)
plus a separate read of ``g`` for the bias gradient.

Imported only through :mod:`terarec.kernels.select` (needs Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C

_ROWS = 512
_BLOCK_M = 64
_BLOCK_N = 128


@triton.jit
def _relu_bias_bwd_kernel(g_ptr, y_ptr, out_ptr, part_ptr, B, N, ROWS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k in range(ROWS // BLOCK_M):
        m = pid_m.to(tl.int64) * ROWS + k * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (m < B)[:, None] & nmask[None, :]
        offs = m[:, None] * N + n[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0)
        g = tl.where(y > 0, g, tl.zeros_like(g))
        tl.store(out_ptr + offs, g, mask=mask)
        acc += tl.sum(g.to(tl.float32), axis=0)
    tl.store(part_ptr + pid_m * N + n, acc, mask=nmask)


def relu_bias_backward(grad: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.relu_bias_backward`."""
    C.check_relu_bias(grad, y)
    b, n = grad.shape
    grad, y = grad.contiguous(), y.contiguous()
    out = torch.empty_like(grad)
    n_m = triton.cdiv(max(b, 1), _ROWS)
    part = torch.empty((n_m, n), dtype=torch.float32, device=grad.device)
    if b and n:
        _relu_bias_bwd_kernel[(n_m, triton.cdiv(n, _BLOCK_N))](
            grad, y, out, part, b, n, ROWS=_ROWS, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
            num_warps=4)
    else:
        part.zero_()
    return out, part.sum(0).to(grad.dtype)

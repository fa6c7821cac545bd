"""Public entry points of the kernels: each forwards to the implementation chosen by
:mod:`terarec.kernels.select` (Triton on CUDA when importable, else the torch twin).

The signatures and semantics are documented on the torch twins in
:mod:`terarec.kernels.reference`; both implementations take exactly the same arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from terarec.kernels.select import implementation


def pooled_lookup(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor, mean: bool,
                  out_dtype: torch.dtype | None = None, hotness: int | None = None,
                  out: torch.Tensor | None = None,
                  out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled lookup of one table: ``[N, D]``, or written into rows ``out_rows`` of ``out``
    (see reference.pooled_lookup)."""
    return implementation("pooled_lookup", weight)(weight, rows, offsets, mean, out_dtype,
                                                   hotness, out, out_rows)


def pooled_lookup_multi(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                        table_offsets: torch.Tensor, mean: bool | Sequence[bool] | torch.Tensor,
                        slots: int = 1, out_dtype: torch.dtype | None = None,
                        hotness: int | None = None) -> torch.Tensor:
    """Pooled lookup of all tables in one launch: ``[B, T*slots, D]``."""
    return implementation("pooled_lookup_multi", weight)(
        weight, rows, offsets, table_offsets, mean, slots, out_dtype, hotness)


def sparse_grad(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unique_rows [U] sorted, grad [U, D] float32)`` of a pooled lookup; deterministic."""
    return implementation("sparse_grad", grad_out)(grad_out, rows, offsets, mean)


def sparse_grad_multi(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                      table_offsets: torch.Tensor, mean: bool | Sequence[bool] | torch.Tensor,
                      slots: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`pooled_lookup_multi`: ``(unique global rows, grad [U, D])``."""
    return implementation("sparse_grad_multi", grad_out)(grad_out, rows, offsets, table_offsets,
                                                         mean, slots)


def row_sums(grad: torch.Tensor, rows: torch.Tensor, grad_rows: torch.Tensor | None = None,
             num_rows: int | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per distinct row, sync-free: ``(rows_out, sums, count)``; the first ``count`` entries
    are valid (see the twin's docstring)."""
    return implementation("row_sums", grad)(grad, rows, grad_rows, num_rows)


def fused_backward_update(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                          mean: bool, weight: torch.Tensor, states: Sequence[torch.Tensor],
                          optimizer: str, lr: float, **hyper: float) -> torch.Tensor | None:
    """Aggregate the lookup gradient per unique row and apply ``optimizer`` in place.

    ``hyper``: momentum_factor, beta1, beta2, epsilon, lambda1, lambda2, step, grad_scale,
    stochastic_rounding, seed, hotness, and for all tables at once (the backward of
    :func:`pooled_lookup_multi`) table_offsets and slots. Returns the sorted unique rows, or
    None with ``return_unique=False`` (no host sync on the Triton path).
    """
    return implementation("fused_backward_update", weight)(
        grad_out, rows, offsets, mean, weight, states, optimizer, lr, **hyper)


def sgd_update(weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float,
               **kw: object) -> None:
    """``w -= lr*g`` on unique rows, in place."""
    implementation("sgd_update", weight)(weight, rows, grad, lr, **kw)


def momentum_update(weight: torch.Tensor, momentum: torch.Tensor, rows: torch.Tensor,
                    grad: torch.Tensor, lr: float, momentum_factor: float, **kw: object) -> None:
    """``m = f*m - lr*g; w += m`` on unique rows, in place."""
    implementation("momentum_update", weight)(weight, momentum, rows, grad, lr,
                                              momentum_factor, **kw)


def nesterov_update(weight: torch.Tensor, accum: torch.Tensor, rows: torch.Tensor,
                    grad: torch.Tensor, lr: float, mu: float, **kw: object) -> None:
    """``a' = mu*a - lr*g; w += -mu*a + (1+mu)*a'`` on unique rows, in place."""
    implementation("nesterov_update", weight)(weight, accum, rows, grad, lr, mu, **kw)


def adagrad_update(weight: torch.Tensor, accum: torch.Tensor, rows: torch.Tensor,
                   grad: torch.Tensor, lr: float, eps: float, **kw: object) -> None:
    """``s += g^2; w -= lr*g/(eps + sqrt(s))`` on unique rows, in place."""
    implementation("adagrad_update", weight)(weight, accum, rows, grad, lr, eps, **kw)


def adam_update(weight: torch.Tensor, m: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                grad: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float,
                step: int, **kw: object) -> None:
    """HugeCTR Adam (bias correction of step ``step``) on unique rows, in place."""
    implementation("adam_update", weight)(weight, m, v, rows, grad, lr, beta1, beta2, eps, step,
                                          **kw)


def ftrl_update(weight: torch.Tensor, n: torch.Tensor, z: torch.Tensor, rows: torch.Tensor,
                grad: torch.Tensor, lr: float, lambda1: float, lambda2: float,
                **kw: object) -> None:
    """HugeCTR Ftrl (states n, z) on unique rows, in place."""
    implementation("ftrl_update", weight)(weight, n, z, rows, grad, lr, lambda1, lambda2, **kw)


def stochastic_round_to_bf16(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """float32 -> bfloat16 with stochastic rounding (unbiased in expectation)."""
    return implementation("stochastic_round_to_bf16", x)(x, seed)


def mark_rows(used: torch.Tensor, rows: torch.Tensor) -> None:
    """``used[rows] = True`` in place (the "row used" flags of a direct-mapped table)."""
    implementation("mark_rows", used)(used, rows)


def relu_bias_backward(grad: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad * (y > 0), its column sums)``: a ReLU layer's backward before the GEMMs."""
    return implementation("relu_bias_backward", grad)(grad, y)


def linear_relu_dgrad(grad: torch.Tensor, weight: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``relu_bias_backward(grad @ weight.T, y)`` with the mask and column sums in the GEMM's
    epilogue on the Triton path (see reference.linear_relu_dgrad)."""
    return implementation("linear_relu_dgrad", grad)(grad, weight, y)


def cross_forward(x0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """DCN cross update ``x0 * (u + b) + x`` in one pass (see reference.cross_forward)."""
    return implementation("cross_forward", x0)(x0, u, b, x)


def cross_backward(grad: torch.Tensor, x0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                   dx0: torch.Tensor | None = None, add_grad: bool = False,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(du, dx0, db)`` of :func:`cross_forward` in one pass; ``dx0`` accumulates in place
    (see reference.cross_backward)."""
    return implementation("cross_backward", x0)(grad, x0, u, b, dx0, add_grad)


def interaction_forward(dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """DLRM dot interaction ``[B, E + n(n-1)/2 + 1]``, n = S+1 (HugeCTR layout)."""
    return implementation("interaction_forward", dense)(dense, emb)


def interaction_backward(grad_out: torch.Tensor, dense: torch.Tensor,
                         emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d_dense, d_emb)`` of :func:`interaction_forward`."""
    return implementation("interaction_backward", dense)(grad_out, dense, emb)


class _Interaction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dense, emb):  # noqa: ANN001, ANN205
        ctx.save_for_backward(dense, emb)
        return interaction_forward(dense, emb)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        dense, emb = ctx.saved_tensors
        return interaction_backward(grad_out.contiguous(), dense, emb)


def interaction(dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Autograd-aware DLRM dot interaction (forward and backward through the selected kernels)."""
    return _Interaction.apply(dense, emb)

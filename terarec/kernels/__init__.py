"""Fused GPU kernels for embeddings, sparse optimizers, the DLRM interaction, the DCN cross
update and AUC.

Every kernel has a Triton version (``triton_*.py``, imported lazily) and a plain-PyTorch twin
of the same signature (:mod:`terarec.kernels.reference`). Which one runs is decided in one
place, :mod:`terarec.kernels.select`: Triton for CUDA tensors when Triton imports, else the
twin; ``use_triton(False)`` or ``TERAREC_KERNELS=torch|triton`` overrides.

This package imports nothing else from terarec, so it can be loaded on its own.
"""

from __future__ import annotations

from terarec.kernels.auc import exact_auc
from terarec.kernels.ops import (
    adagrad_update,
    adam_update,
    cross_backward,
    cross_forward,
    ftrl_update,
    fused_backward_update,
    interaction,
    interaction_backward,
    interaction_forward,
    linear_relu_dgrad,
    mark_rows,
    momentum_update,
    nesterov_update,
    pooled_lookup,
    pooled_lookup_multi,
    relu_bias_backward,
    row_sums,
    sgd_update,
    sparse_grad,
    sparse_grad_multi,
    stochastic_round_to_bf16,
)
from terarec.kernels.select import backend_for, triton_available, use_triton

__all__ = [
    "adagrad_update",
    "adam_update",
    "backend_for",
    "cross_backward",
    "cross_forward",
    "exact_auc",
    "ftrl_update",
    "fused_backward_update",
    "interaction",
    "interaction_backward",
    "interaction_forward",
    "linear_relu_dgrad",
    "mark_rows",
    "momentum_update",
    "nesterov_update",
    "pooled_lookup",
    "pooled_lookup_multi",
    "relu_bias_backward",
    "row_sums",
    "sgd_update",
    "sparse_grad",
    "sparse_grad_multi",
    "stochastic_round_to_bf16",
    "triton_available",
    "use_triton",
]

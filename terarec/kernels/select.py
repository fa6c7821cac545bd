"""The one place that decides which implementation of a kernel runs: Triton or the torch twin.

Rule (first match wins):

1. an active :func:`use_triton` context (``use_triton(False)`` forces the torch twins,
   ``use_triton(True)`` forces Triton);
2. the environment variable ``TERAREC_KERNELS`` = ``torch`` | ``triton`` | ``auto``;
3. auto: Triton when it is importable and the deciding tensor lives on a CUDA device, else torch.

Forcing Triton on CPU tensors only works under ``TRITON_INTERPRET=1`` (Triton's interpreter,
slow but exact; the tests use it on machines without a GPU).

Triton is imported lazily, here and nowhere else, so ``terarec.kernels`` imports on a CPU-only
install without Triton.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

ENV_VAR = "TERAREC_KERNELS"

# kernel name -> (module holding the Triton version, function name); the torch twin of every
# kernel is the function of the same name in terarec.kernels.reference.
TRITON_IMPLS: dict[str, tuple[str, str]] = {
    "pooled_lookup": ("terarec.kernels.triton_lookup", "pooled_lookup"),
    "pooled_lookup_multi": ("terarec.kernels.triton_lookup", "pooled_lookup_multi"),
    "sparse_grad": ("terarec.kernels.triton_grad", "sparse_grad"),
    "sparse_grad_multi": ("terarec.kernels.triton_grad", "sparse_grad_multi"),
    "row_sums": ("terarec.kernels.triton_grad", "row_sums"),
    "fused_backward_update": ("terarec.kernels.triton_grad", "fused_backward_update"),
    "sgd_update": ("terarec.kernels.triton_optim", "sgd_update"),
    "momentum_update": ("terarec.kernels.triton_optim", "momentum_update"),
    "nesterov_update": ("terarec.kernels.triton_optim", "nesterov_update"),
    "adagrad_update": ("terarec.kernels.triton_optim", "adagrad_update"),
    "adam_update": ("terarec.kernels.triton_optim", "adam_update"),
    "ftrl_update": ("terarec.kernels.triton_optim", "ftrl_update"),
    "stochastic_round_to_bf16": ("terarec.kernels.triton_optim", "stochastic_round_to_bf16"),
    "interaction_forward": ("terarec.kernels.triton_interaction", "interaction_forward"),
    "interaction_backward": ("terarec.kernels.triton_interaction", "interaction_backward"),
    "relu_bias_backward": ("terarec.kernels.triton_mlp", "relu_bias_backward"),
    "linear_relu_dgrad": ("terarec.kernels.triton_mlp", "linear_relu_dgrad"),
    "mark_rows": ("terarec.kernels.triton_lookup", "mark_rows"),
    "cross_forward": ("terarec.kernels.triton_cross", "cross_forward"),
    "cross_backward": ("terarec.kernels.triton_cross", "cross_backward"),
    # Hash index (no twin in reference: the torch twins work on the index's state and live with
    # it, terarec.embedding.fast_path_hash; only ask for these where backend_for is "triton").
    "hash_lookup_or_insert": ("terarec.kernels.triton_hash", "lookup_or_insert"),
    "hash_init_rows": ("terarec.kernels.triton_hash", "init_new_rows"),
}

_local = threading.local()
_triton_ok: bool | None = None


def triton_available() -> bool:
    """True when ``import triton`` works (result cached)."""
    global _triton_ok
    if _triton_ok is None:
        try:
            importlib.import_module("triton")
            _triton_ok = True
        except Exception:  # noqa: BLE001 - any failure means "no Triton"
            _triton_ok = False
    return _triton_ok


@contextlib.contextmanager
def use_triton(enabled: bool) -> Iterator[None]:
    """Force Triton (``True``) or the torch twins (``False``) inside the ``with`` block."""
    stack = _local.__dict__.setdefault("stack", [])
    stack.append("triton" if enabled else "torch")
    try:
        yield
    finally:
        stack.pop()


def requested_backend() -> str:
    """``"triton"``, ``"torch"`` or ``"auto"``: what the context or environment asks for."""
    stack = _local.__dict__.get("stack")
    if stack:
        return stack[-1]
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in ("auto", "torch", "triton"):
        raise ValueError(f"{ENV_VAR}: expected torch, triton or auto. Received: {value!r}")
    return value


def backend_for(tensor: torch.Tensor) -> str:
    """The backend a kernel called on ``tensor`` will use: ``"triton"`` or ``"torch"``."""
    want = requested_backend()
    if want == "torch":
        return "torch"
    if want == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton / use_triton(True) but Triton is not importable")
        return "triton"
    return "triton" if tensor.is_cuda and triton_available() else "torch"


def implementation(name: str, tensor: torch.Tensor) -> Callable[..., Any]:
    """The function that computes kernel ``name`` for inputs living where ``tensor`` lives."""
    if name not in TRITON_IMPLS:
        raise KeyError(f"unknown kernel {name!r}; known: {sorted(TRITON_IMPLS)}")
    if backend_for(tensor) == "torch":
        from terarec.kernels import reference

        return getattr(reference, name)
    module, attr = TRITON_IMPLS[name]
    return getattr(importlib.import_module(module), attr)

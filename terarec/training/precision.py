"""Numeric settings of a run: mixed precision (bf16 autocast on GPU), TF32, loss scaling."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass
class PrecisionConfig:
    """``use_mixed_precision`` / ``enable_tf32_compute`` / ``scaler`` of ``CreateSolver``.

    On a GPU, mixed precision runs the dense layers under bf16 autocast with fp32 master
    weights and fp32 optimizer state (HugeCTR uses fp16; bf16 has fp32's range, so no overflow
    handling is needed). ``scaler`` is honoured as in HugeCTR: the loss is multiplied by it and
    the gradients divided by it before the update. On CPU everything stays fp32.
    """

    use_mixed_precision: bool = False
    enable_tf32_compute: bool = False
    scaler: float = 1.0

    def apply_global(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.enable_tf32_compute
            torch.backends.cudnn.allow_tf32 = self.enable_tf32_compute

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        if self.use_mixed_precision and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

"""The dense network of an inference session, in the precision ``InferenceParams`` asks for.

Owns :class:`DenseRunner`: it calls a ``dense_fn`` (see :mod:`terarec.inference.dense_network`)
either as is (fp32, equal to training's ``Model.predict``) or under ``torch.autocast`` when
HugeCTR's ``use_mixed_precision`` is set. HugeCTR's mixed precision is FP16; terarec uses
bfloat16 by default (FP16's range overflows on raw, un-normalised dense features), and
``torch.float16`` can be asked for. The output is always float32.
"""

from __future__ import annotations

import torch

from terarec.errors import ConfigError
from terarec.inference.dense_network import DenseFn

MIXED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DenseRunner:
    """``runner(pooled, dense) -> (B, label_dim)`` float32 probabilities.

    Args:
        dense_fn: the dense network.
        device: where it runs.
        mixed_precision: ``None`` (fp32), ``"bf16"`` or ``"fp16"``.
    """

    def __init__(self, dense_fn: DenseFn, device: torch.device,
                 mixed_precision: str | None = None) -> None:
        if mixed_precision is not None and mixed_precision not in MIXED_DTYPES:
            raise ConfigError("mixed precision", f"None or one of {sorted(MIXED_DTYPES)}",
                              mixed_precision)
        self.dense_fn = dense_fn
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision

    @torch.no_grad()
    def __call__(self, pooled: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        if self.mixed_precision is None:
            return self.dense_fn(pooled, dense).float()
        with torch.autocast(self.device.type, dtype=MIXED_DTYPES[self.mixed_precision]):
            out = self.dense_fn(pooled, dense)
        return out.float()

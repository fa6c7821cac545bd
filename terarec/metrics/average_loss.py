"""HugeCTR's "AverageLoss": the mean of the evaluation batches' losses.

Formula (``L_b`` = loss passed with batch ``b``, ``B_b`` = its number of samples)::

    AverageLoss = sum_b B_b * L_b / sum_b B_b

HugeCTR averages the per-batch losses with equal weights; weighting by the batch size gives
the same value when all batches are full and the exact per-sample mean when the last batch
is partial. A loss tensor with more than one element is averaged first. No batches: 0.0
(HugeCTR's value when nothing was evaluated).
"""

from __future__ import annotations

import torch
from torch import Tensor

from terarec.errors import ConfigError
from terarec.metrics.base import BaseMetric, LossLike

__all__ = ["AverageLoss"]


class AverageLoss(BaseMetric):
    """Batch-size-weighted mean of the losses given to :meth:`update` (see module docstring)."""

    name = "AverageLoss"

    def __init__(self, *, distributed: bool = True, process_group: object | None = None) -> None:
        super().__init__(distributed=distributed, process_group=process_group)
        self._loss_sum: Tensor | float = 0.0
        self._count = 0

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None) -> None:
        if loss is None:
            raise ConfigError(
                "AverageLoss.update(loss=...)", "the batch's loss (a float or a tensor)", None
            )
        batch = int(preds.shape[0]) if isinstance(preds, Tensor) and preds.dim() > 0 else 1
        if isinstance(loss, Tensor):
            value = loss.detach()
            value = value.reshape(()) if value.numel() == 1 else value.mean()
            value = value.to(torch.float64) * batch
        else:
            value = float(loss) * batch
        self._loss_sum = self._loss_sum + value
        self._count += batch

    def compute(self) -> float:
        total = self._loss_sum
        dev = total.device if isinstance(total, Tensor) else torch.device("cpu")
        state = torch.stack(
            [
                torch.as_tensor(total, dtype=torch.float64, device=dev),
                torch.tensor(float(self._count), dtype=torch.float64, device=dev),
            ]
        )
        loss_sum, count = self._all_reduce_sum(state).tolist()
        return loss_sum / count if count > 0 else 0.0

    def reset(self) -> None:
        self._loss_sum = 0.0
        self._count = 0

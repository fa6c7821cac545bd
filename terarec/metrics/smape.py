"""HugeCTR's "SMAPE": symmetric mean absolute percentage error.

HugeCTR's kernel (``collect_error`` in ``metrics.cu``) sums, over every prediction ``p`` with
label ``y``, ``|p - y| / ((p + y) / 2)`` and divides by the number of samples::

    SMAPE = (1 / n) * sum_i |p_i - y_i| / ((p_i + y_i) / 2)

It is a fraction in [0, 2] for non-negative values (no factor 100). A term with
``p + y == 0`` (HugeCTR: 0 / 0 = NaN) counts as 0 here, since prediction and label agree.
No samples: 0.0. Every element of a ``(B, T)`` batch counts as one sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from terarec.metrics.base import BaseMetric, LossLike

__all__ = ["SMAPE"]


class SMAPE(BaseMetric):
    """Mean of ``|p - y| / ((p + y) / 2)`` over all predictions (see module docstring)."""

    name = "SMAPE"

    def __init__(self, *, distributed: bool = True, process_group: object | None = None) -> None:
        super().__init__(distributed=distributed, process_group=process_group)
        self._state: Tensor | None = None  # float64 [error_sum, count] on the data's device

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None) -> None:
        p, y = self._check(preds, labels)
        p = p.to(torch.float64)
        y = y.to(torch.float64)
        avg = (p + y) / 2
        err = torch.where(avg != 0, (p - y).abs() / torch.where(avg != 0, avg, 1.0), 0.0)
        count = torch.tensor(float(p.numel()), dtype=torch.float64, device=p.device)
        batch = torch.stack([err.sum(), count])
        self._state = batch if self._state is None else self._state + batch

    def compute(self) -> float:
        state = self._state if self._state is not None else torch.zeros(2, dtype=torch.float64)
        error, count = self._all_reduce_sum(state).tolist()
        return error / count if count > 0 else 0.0

    def reset(self) -> None:
        self._state = None

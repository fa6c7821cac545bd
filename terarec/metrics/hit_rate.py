"""HugeCTR's "HitRate": the precision of the confident predictions.

HugeCTR's kernel (``collect_hits`` in ``metrics.cu``) counts, over every prediction ``p``
with label ``y``::

    checked = #{p > 0.8}            hits = #{p > 0.8 and y == 1}
    HitRate = hits / checked

This is a precision at threshold 0.8, *not* the NCF "HR@K". Every element of a ``(B, T)``
batch counts. When no prediction exceeds the threshold the ratio is undefined (HugeCTR
divides 0 by 0); terarec returns 0.0, the usual "no positive predictions" precision, and
also 0.0 when nothing was accumulated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from terarec.metrics.base import BaseMetric, LossLike

__all__ = ["HitRate"]


class HitRate(BaseMetric):
    """Fraction of predictions ``> threshold`` whose label is 1 (see module docstring).

    Args:
        threshold: the strict lower bound a prediction must pass to be counted (HugeCTR: 0.8).
    """

    name = "HitRate"

    def __init__(
        self,
        *,
        threshold: float = 0.8,
        distributed: bool = True,
        process_group: object | None = None,
    ) -> None:
        super().__init__(distributed=distributed, process_group=process_group)
        self.threshold = float(threshold)
        self._state: Tensor | None = None  # int64 [hits, checked] on the data's device

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None) -> None:
        p, y = self._check(preds, labels)
        confident = p > self.threshold
        batch = torch.stack([(confident & (y == 1)).sum(), confident.sum()])
        self._state = batch if self._state is None else self._state + batch

    def compute(self) -> float:
        state = self._state if self._state is not None else torch.zeros(2, dtype=torch.int64)
        hits, checked = self._all_reduce_sum(state).tolist()
        return hits / checked if checked > 0 else 0.0

    def reset(self) -> None:
        self._state = None

"""Exact ROC-AUC ("AUC"), computed by one vectorised sort on the device.

Ties are handled exactly as scikit-learn's ``roc_auc_score``: the ROC curve has one point per
*distinct* prediction value and is integrated with the trapezoid rule, which equals the
Mann-Whitney statistic with tied pairs counted as one half::

    AUC = sum_i pos_i * (neg(p < p_i) + neg(p <= p_i)) / 2  /  (P * N)

where ``pos_i = y_i`` and ``neg_i = 1 - y_i`` are the sample's positive/negative weights
(``y`` in {0, 1}; fractional labels act as weights, like HugeCTR's TP/FP cumulative sums),
``neg(c)`` is the total negative weight of the samples satisfying ``c``, ``P = sum pos`` and
``N = sum neg``. On sorted predictions the two ``neg(...)`` terms are cumulative sums read at
the first and last index of the sample's run of tied predictions (found with a running max /
min), so the cost is one sort plus O(n) scans: no Python loop, no data-dependent shapes.

Multi-label input ``(B, T)`` gives one AUC per column (:attr:`AUC.per_class`, HugeCTR prints
them) and :meth:`AUC.compute` reports their arithmetic mean.

Single-class input (a column with no positives or no negatives, or no samples at all): the
AUC is undefined. HugeCTR computes ``TPR = TP / P`` and gets ``0 / 0 = NaN``; terarec returns
the same ``float("nan")`` by default (``single_class_value`` overrides it, e.g. ``0.5``) and
never raises. ``NaN > threshold`` is false, so a NaN never triggers the AUC early stop. A NaN
column makes the multi-label mean NaN, as in HugeCTR.
"""

from __future__ import annotations

import torch
from torch import Tensor

from terarec.errors import ConfigError
from terarec.metrics.base import BaseMetric, LossLike

__all__ = ["AUC", "exact_auc"]


def exact_auc(preds: Tensor, labels: Tensor, single_class_value: float = float("nan")) -> Tensor:
    """Per-column exact ROC-AUC of ``preds`` against ``labels``.

    Args:
        preds: scores shaped ``(n,)`` or ``(n, T)`` (any float dtype, any device).
        labels: 0/1 labels (or weights in [0, 1]) with the same number of elements.
        single_class_value: value of a column whose labels are all one class.

    Returns:
        A float64 tensor of shape ``(T,)`` on the device of ``preds`` (``(1,)`` for 1-D input).
    """
    n = preds.shape[0]
    p = preds.reshape(n, -1)
    if not p.is_floating_point() or p.dtype in (torch.float16, torch.bfloat16):
        p = p.float()
    p = p.t().contiguous()  # (T, n): sort and search along the last dim
    y = labels.reshape(n, -1).to(device=p.device, dtype=torch.float64).t()
    sorted_p, order = torch.sort(p, dim=-1)
    pos = torch.gather(y, -1, order)
    neg = 1.0 - pos
    neg_cum = torch.nn.functional.pad(torch.cumsum(neg, dim=-1), (1, 0))  # (T, n + 1)
    # Tie groups: [first, last] index of each sample's run of equal predictions, found with
    # running max/min (O(n), static shapes) instead of binary searches.
    changes = sorted_p[:, 1:] != sorted_p[:, :-1]
    edge = torch.ones_like(changes[:, :1])
    idx = torch.arange(n, device=p.device).expand_as(sorted_p)
    first = torch.where(torch.cat([edge, changes], dim=1), idx, 0).cummax(dim=-1).values
    last = torch.where(torch.cat([changes, edge], dim=1), idx, n).flip(-1).cummin(-1).values
    below = torch.gather(neg_cum, -1, first)  # negative weight with p < p_i
    upto = torch.gather(neg_cum, -1, last.flip(-1) + 1)  # negative weight with p <= p_i
    area = 0.5 * (pos * (below + upto)).sum(dim=-1)
    n_pos = pos.sum(dim=-1)
    n_neg = neg_cum[:, -1]
    defined = (n_pos > 0) & (n_neg > 0)
    auc = area / torch.where(defined, n_pos * n_neg, torch.ones_like(area))
    return torch.where(defined, auc, torch.full_like(auc, single_class_value))


class AUC(BaseMetric):
    """HugeCTR's "AUC": exact ROC-AUC over every sample accumulated since :meth:`reset`.

    ``update`` only keeps (detached) references to the batch's predictions and labels on their
    device; ``compute`` concatenates them, all-gathers them across ranks when a process group
    is initialised, and runs :func:`exact_auc`. Memory is 2 x 4 bytes per prediction.

    Args:
        single_class_value: returned for a column with a single class (default NaN, see the
            module docstring).
        distributed, process_group: see :class:`~terarec.metrics.base.BaseMetric`.
    """

    name = "AUC"

    def __init__(
        self,
        *,
        single_class_value: float = float("nan"),
        distributed: bool = True,
        process_group: object | None = None,
    ) -> None:
        super().__init__(distributed=distributed, process_group=process_group)
        self.single_class_value = float(single_class_value)
        self.per_class: list[float] = []
        self._preds: list[Tensor] = []
        self._labels: list[Tensor] = []

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None) -> None:
        p, y = self._check(preds, labels)
        if self._preds and p.shape[1] != self._preds[0].shape[1]:
            raise ConfigError(
                "AUC.update(preds)",
                f"{self._preds[0].shape[1]} label column(s) as in earlier batches",
                tuple(preds.shape),
            )
        self._preds.append(p)
        self._labels.append(y)

    def compute(self) -> float:
        if self._preds:
            preds = torch.cat(self._preds)
            labels = torch.cat(self._labels)
        else:
            preds = labels = torch.zeros((0, 1))
        preds = self._all_gather_rows(preds)
        labels = self._all_gather_rows(labels)
        if preds.shape[0] == 0:
            self.per_class = [self.single_class_value] * preds.shape[1]
            return self.single_class_value
        aucs = exact_auc(preds, labels, self.single_class_value)
        self.per_class = [float(v) for v in aucs.cpu()]
        return sum(self.per_class) / len(self.per_class)

    def reset(self) -> None:
        self._preds.clear()
        self._labels.clear()
        self.per_class = []

"""HugeCTR's "NDCG": one normalised discounted cumulative gain over the whole evaluation set.

HugeCTR (``NDCG::finalize_metric`` in ``metrics.cu``) treats all evaluated samples as a single
ranked list, with no per-query grouping::

    order samples by prediction, highest first; rank r = 0, 1, ..., n - 1
    DCG   = sum_r y_(r) / log2(r + 2)
    IDCG  = same sum with the labels themselves sorted in descending order
    NDCG  = DCG / IDCG

Ties follow HugeCTR's implementation: a stable *ascending* sort read from the end, so among
equal predictions the sample seen later (later batch, later row; with several ranks, the
higher rank) is ranked first. Every element of a ``(B, T)`` batch is one sample.
When ``IDCG == 0`` (no positive label; HugeCTR divides 0 by 0) or nothing was accumulated,
terarec returns 0.0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from terarec.metrics.base import BaseMetric, LossLike

__all__ = ["NDCG", "ndcg"]


def ndcg(preds: Tensor, labels: Tensor) -> float:
    """HugeCTR's global NDCG of flat ``preds`` against ``labels`` (see module docstring)."""
    p = preds.reshape(-1)
    y = labels.reshape(-1).to(device=p.device, dtype=torch.float64)
    n = p.numel()
    if n == 0:
        return 0.0
    # Ascending position i has rank n - 1 - i from the top, so discount 1 / log2(n + 1 - i).
    discount = 1.0 / torch.log2(torch.arange(n + 1, 1, -1, device=p.device, dtype=torch.float64))
    order = torch.sort(p, stable=True).indices
    dcg = (y[order] * discount).sum()
    idcg = (torch.sort(y).values * discount).sum()
    dcg_v, idcg_v = torch.stack([dcg, idcg]).tolist()
    return dcg_v / idcg_v if idcg_v != 0 else 0.0


class NDCG(BaseMetric):
    """Global NDCG of every prediction accumulated since :meth:`reset` (see module docstring)."""

    name = "NDCG"

    def __init__(self, *, distributed: bool = True, process_group: object | None = None) -> None:
        super().__init__(distributed=distributed, process_group=process_group)
        self._preds: list[Tensor] = []
        self._labels: list[Tensor] = []

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None) -> None:
        p, y = self._check(preds, labels)
        self._preds.append(p.reshape(-1, 1))
        self._labels.append(y.reshape(-1, 1))

    def compute(self) -> float:
        if self._preds:
            preds, labels = torch.cat(self._preds), torch.cat(self._labels)
        else:
            preds = labels = torch.zeros((0, 1))
        return ndcg(self._all_gather_rows(preds), self._all_gather_rows(labels))

    def reset(self) -> None:
        self._preds.clear()
        self._labels.clear()

"""Log loss ("LogLoss") and normalized entropy ("NE"): terarec extensions, not HugeCTR metrics.

Definitions (``p_i`` = predicted probability clipped to ``[eps, 1 - eps]``, ``y_i`` in [0, 1],
``n`` samples; He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", 2014)::

    LogLoss = -1/n * sum_i (y_i log p_i + (1 - y_i) log(1 - p_i))
    CTR     = 1/n * sum_i y_i                                  (the base click-through rate)
    NE      = LogLoss / -(CTR log CTR + (1 - CTR) log(1 - CTR))

Both are computed from the predictions (float64), never from the training loss, so fit-time
evaluation and an offline ``predict()`` give the same numbers. NE is NaN when the base CTR is 0
or 1 (zero entropy) or nothing was evaluated. Multi-label input ``(B, T)``: one value per
column, the mean is reported. State: 3 float64 sums per column; one all-reduce across ranks.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from terarec.errors import ConfigError
from terarec.metrics.base import BaseMetric, LossLike

__all__ = ["DEFAULT_EPS", "NormalizedEntropy", "log_loss_sums", "normalized_entropy"]

#: Default probability clipping (float64 arithmetic: ``log(1e-12)`` is about -27.6).
DEFAULT_EPS = 1e-12


def log_loss_sums(preds: Tensor, labels: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """float64 ``(T, 3)``: per column the summed log loss, the summed labels and the count."""
    p = (preds.unsqueeze(1) if preds.dim() == 1 else preds).to(torch.float64)
    p = p.clamp(eps, 1.0 - eps)
    y = labels.reshape(p.shape).to(device=p.device, dtype=torch.float64)
    n = p.shape[0]
    loss = -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p)).sum(0)
    count = torch.full_like(loss, float(n))
    return torch.stack([loss, y.sum(0), count], dim=1)


def _finish(sums: list[float]) -> tuple[float, float]:
    """``(NE, LogLoss)`` of one column's ``[loss_sum, label_sum, count]``."""
    loss_sum, label_sum, count = sums
    if count <= 0:
        return math.nan, math.nan
    logloss = loss_sum / count
    ctr = label_sum / count
    if ctr <= 0.0 or ctr >= 1.0:
        return math.nan, logloss
    entropy = -(ctr * math.log(ctr) + (1.0 - ctr) * math.log1p(-ctr))
    return logloss / entropy, logloss


def normalized_entropy(preds: Tensor, labels: Tensor, eps: float = DEFAULT_EPS) -> tuple[float, float]:
    """``(NE, LogLoss)`` of one process's data, averaged over label columns."""
    if preds.numel() != labels.numel() or preds.dim() not in (1, 2):
        raise ConfigError("normalized_entropy(preds, labels)",
                          "preds (n,) or (n, T) and as many labels",
                          (tuple(preds.shape), tuple(labels.shape)))
    per = [_finish(row) for row in log_loss_sums(preds, labels, eps).cpu().tolist()]
    return sum(v[0] for v in per) / len(per), sum(v[1] for v in per) / len(per)


class NormalizedEntropy(BaseMetric):
    """NE and log loss over every sample accumulated since :meth:`reset` (terarec extension).

    :meth:`compute` returns NE; :meth:`results` returns ``{"NE": ..., "LogLoss": ...}``.

    Args:
        eps: probability clipping before the logarithms.
        distributed, process_group: see :class:`~terarec.metrics.base.BaseMetric`.
    """

    name = "NE"

    def __init__(self, *, eps: float = DEFAULT_EPS, distributed: bool = True,
                 process_group: object | None = None) -> None:
        super().__init__(distributed=distributed, process_group=process_group)
        if not 0.0 < eps < 0.5:
            raise ConfigError("NormalizedEntropy(eps=...)", "a clipping value in (0, 0.5)", eps)
        self.eps = float(eps)
        self.per_class: list[tuple[float, float]] = []
        self._sums: Tensor | None = None

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None) -> None:
        p, y = self._check(preds, labels)
        sums = log_loss_sums(p, y, self.eps)
        if self._sums is not None and self._sums.shape != sums.shape:
            raise ConfigError("NE.update(preds)",
                              f"{self._sums.shape[0]} label column(s) as earlier", tuple(preds.shape))
        self._sums = sums if self._sums is None else self._sums + sums

    def _per_class(self) -> list[tuple[float, float]]:
        local = self._sums
        if self._dist_world() > 1:  # ranks agree on the number of columns (an idle rank has 0)
            mine = local.shape[0] if local is not None else 0
            width = torch.tensor([mine], dtype=torch.int64,
                                 device=self._comm_device(local if local is not None
                                                          else torch.zeros(0)))
            dist.all_reduce(width, op=dist.ReduceOp.MAX, group=self.process_group)  # type: ignore[arg-type]
            if local is not None and mine != int(width):
                raise ConfigError("NE.compute", "the same number of labels on every rank", mine)
            if local is None:
                local = torch.zeros((max(int(width), 1), 3), dtype=torch.float64)
        elif local is None:
            local = torch.zeros((1, 3), dtype=torch.float64)
        total = self._all_reduce_sum(local)
        self.per_class = [_finish(row) for row in total.cpu().tolist()]
        return self.per_class

    def compute(self) -> float:
        per = self._per_class()
        return sum(v[0] for v in per) / len(per)

    def results(self) -> dict[str, float]:
        """NE and LogLoss (one cross-rank reduction)."""
        per = self._per_class()
        return {"NE": sum(v[0] for v in per) / len(per),
                "LogLoss": sum(v[1] for v in per) / len(per)}

    def reset(self) -> None:
        self._sums = None
        self.per_class = []

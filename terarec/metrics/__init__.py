"""HugeCTR's evaluation metrics: "AUC", "AverageLoss", "HitRate", "NDCG" and "SMAPE".

Every metric follows the :class:`Metric` protocol (``update(preds, labels, loss=None)`` per
batch, ``compute() -> float``, ``reset()``), accumulates on the device of its inputs without
per-batch host synchronisation, and combines all ``torch.distributed`` ranks in ``compute``.

    >>> metrics = create_metrics({"AUC": 0.8025, "AverageLoss": 1.0})
    >>> spec = MetricsSpec.parse({"AUC": 0.8025}); spec.should_stop({"AUC": 0.81})
    True
"""

from __future__ import annotations

from terarec.metrics.auc import AUC, exact_auc
from terarec.metrics.average_loss import AverageLoss
from terarec.metrics.base import BaseMetric, Metric
from terarec.metrics.hit_rate import HitRate
from terarec.metrics.ndcg import NDCG, ndcg
from terarec.metrics.smape import SMAPE
from terarec.metrics.spec import DEFAULT_AUC_THRESHOLD, METRICS, MetricsSpec, create_metrics

__all__ = [
    "AUC",
    "DEFAULT_AUC_THRESHOLD",
    "METRICS",
    "NDCG",
    "SMAPE",
    "AverageLoss",
    "BaseMetric",
    "HitRate",
    "Metric",
    "MetricsSpec",
    "create_metrics",
    "exact_auc",
    "ndcg",
]

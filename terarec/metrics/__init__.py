"""HugeCTR's evaluation metrics: "AUC", "AverageLoss", "HitRate", "NDCG" and "SMAPE".

Every metric follows the :class:`Metric` protocol (``update(preds, labels, loss=None)`` per
batch, ``compute() -> float``, ``reset()``), accumulates on the device of its inputs without
per-batch host synchronisation, and combines all ``torch.distributed`` ranks in ``compute``.

    >>> metrics = create_metrics({"AUC": 0.8025, "AverageLoss": 1.0})
    >>> spec = MetricsSpec.parse({"AUC": 0.8025}); spec.should_stop({"AUC": 0.81})
    True

terarec extensions (not in HugeCTR's ``MetricsType``): :class:`GroupAUC` ("GAUC", also reports
"uAUC"; group id read from a sparse input slot), :class:`NormalizedEntropy` ("NE", also reports
"LogLoss"), run next to the HugeCTR metrics by :class:`MetricSet` (see :mod:`.extensions`).
"""

from __future__ import annotations

from terarec.metrics.auc import AUC, exact_auc
from terarec.metrics.average_loss import AverageLoss
from terarec.metrics.base import BaseMetric, Metric
from terarec.metrics.entropy import NormalizedEntropy, normalized_entropy
from terarec.metrics.extensions import EXTENSION_METRICS, MetricSet, resolve_metric
from terarec.metrics.group_auc import GroupAUC, GroupAUCResult, group_auc, group_ids_from_batch
from terarec.metrics.hit_rate import HitRate
from terarec.metrics.ndcg import NDCG, ndcg
from terarec.metrics.smape import SMAPE
from terarec.metrics.spec import DEFAULT_AUC_THRESHOLD, METRICS, MetricsSpec, create_metrics

__all__ = [
    "AUC",
    "DEFAULT_AUC_THRESHOLD",
    "EXTENSION_METRICS",
    "METRICS",
    "NDCG",
    "SMAPE",
    "AverageLoss",
    "BaseMetric",
    "GroupAUC",
    "GroupAUCResult",
    "HitRate",
    "Metric",
    "MetricSet",
    "MetricsSpec",
    "NormalizedEntropy",
    "create_metrics",
    "exact_auc",
    "group_auc",
    "group_ids_from_batch",
    "ndcg",
    "normalized_entropy",
    "resolve_metric",
]

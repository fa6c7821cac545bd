"""The metric registry, :func:`create_metrics` and :class:`MetricsSpec`.

HugeCTR configures evaluation with ``CreateSolver(metrics_spec={MetricsType.AUC: 1.0})``: a
mapping from metric to a float. Only the AUC value means something: training stops early
once the evaluated AUC is *strictly greater* than it (default 1.0, i.e. never). The values of
the other metrics are ignored. The legacy JSON solver wrote the same thing as
``"eval_metrics": ["AUC:0.8025", "AverageLoss"]``; :meth:`MetricsSpec.parse` reads both.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from terarec.errors import ConfigError
from terarec.metrics.auc import AUC
from terarec.metrics.average_loss import AverageLoss
from terarec.metrics.base import BaseMetric, Metric
from terarec.metrics.hit_rate import HitRate
from terarec.metrics.ndcg import NDCG
from terarec.metrics.smape import SMAPE
from terarec.utils.registry import Registry

__all__ = ["DEFAULT_AUC_THRESHOLD", "METRICS", "MetricsSpec", "SpecLike", "create_metrics"]

#: Name -> metric class, keyed by HugeCTR's ``MetricsType`` member names.
METRICS: Registry[type[BaseMetric]] = Registry("metric")
for _cls in (AUC, AverageLoss, HitRate, NDCG, SMAPE):
    METRICS.add(_cls.name, _cls)

#: HugeCTR's default AUC early-stop threshold (AUC can never exceed it, so: never stop).
DEFAULT_AUC_THRESHOLD = 1.0

SpecLike = Union["MetricsSpec", Mapping[Any, float], Iterable[Any], None]


def _name(key: Any, where: str) -> str:
    name = key.name if isinstance(key, enum.Enum) else key
    if not isinstance(name, str):
        raise ConfigError(where, "a MetricsType member or a metric name string", key)
    return METRICS.canonical(name, where)


def _threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(where, "a number (the metric's threshold)", value)
    return float(value)


@dataclass(frozen=True)
class MetricsSpec:
    """Which metrics to evaluate, in order, and their thresholds.

    Attributes:
        thresholds: canonical metric name -> threshold (only ``"AUC"``'s is used).
    """

    thresholds: dict[str, float] = field(default_factory=lambda: {"AUC": DEFAULT_AUC_THRESHOLD})

    @classmethod
    def parse(cls, spec: SpecLike = None, where: str = "metrics_spec") -> MetricsSpec:
        """Build a spec from HugeCTR's forms.

        Accepts ``None`` (HugeCTR's default ``{AUC: 1.0}``), a mapping ``{MetricsType.AUC: 0.8,
        "HitRate": 1.0}``, or a list of names / ``"Name:threshold"`` strings / enum members
        (threshold 1.0 when absent), or a :class:`MetricsSpec` (returned unchanged).
        """
        if isinstance(spec, MetricsSpec):
            return spec
        if spec is None:
            return cls()
        items: list[tuple[Any, Any]] = []
        if isinstance(spec, Mapping):
            items = list(spec.items())
        elif isinstance(spec, Iterable) and not isinstance(spec, (str, bytes)):
            for entry in spec:
                if isinstance(entry, str) and ":" in entry:
                    key, _, raw = entry.partition(":")
                    try:
                        value: Any = float(raw)
                    except ValueError:
                        raise ConfigError(
                            f"{where}[{entry!r}]",
                            "'Name:threshold' with a numeric threshold",
                            entry,
                        ) from None
                    items.append((key.strip(), value))
                else:
                    items.append((entry, DEFAULT_AUC_THRESHOLD))
        else:
            raise ConfigError(where, "a dict {MetricsType: threshold} or a list of names", spec)
        thresholds: dict[str, float] = {}
        for key, value in items:
            name = _name(key, f"{where} key")
            if name in thresholds:
                raise ConfigError(where, "each metric at most once", name)
            thresholds[name] = _threshold(value, f"{where}[{name!r}]")
        return cls(thresholds)

    @property
    def names(self) -> list[str]:
        """The metric names, in evaluation order."""
        return list(self.thresholds)

    @property
    def auc_threshold(self) -> float | None:
        """The AUC early-stop threshold, or ``None`` when AUC is not evaluated."""
        return self.thresholds.get("AUC")

    def should_stop(self, values: Mapping[str, float] | Iterable[tuple[str, float]]) -> bool:
        """True when the evaluated AUC is strictly greater than :attr:`auc_threshold`.

        ``values`` is ``{name: value}`` or HugeCTR's ``[(name, value), ...]``. A NaN AUC
        (single-class evaluation set) never stops training.
        """
        thr = self.auc_threshold
        got = dict(values)
        if thr is None or "AUC" not in got:
            return False
        return float(got["AUC"]) > thr

    def create(self, **kwargs: Any) -> dict[str, Metric]:
        """Fresh metric objects, ``{name: metric}`` in order (``kwargs`` go to every metric,
        e.g. ``distributed=False``)."""
        return {name: METRICS.get(name)(**kwargs) for name in self.thresholds}


def create_metrics(metrics_spec: SpecLike = None, **kwargs: Any) -> dict[str, Metric]:
    """``{name: metric}`` for a HugeCTR ``metrics_spec`` (see :meth:`MetricsSpec.parse`).

    Example:
        >>> from terarec.enums import MetricsType
        >>> sorted(create_metrics({MetricsType.AUC: 0.8, "AverageLoss": 1.0}))
        ['AUC', 'AverageLoss']
    """
    return MetricsSpec.parse(metrics_spec).create(**kwargs)

"""terarec's extra evaluation metrics (not HugeCTR's) and :class:`MetricSet`, which runs them
next to the HugeCTR ones.

HugeCTR's ``CreateSolver(metrics_spec={MetricsType.AUC: 1.0, ...})`` keeps its meaning and
only names HugeCTR metrics. Extras are added one by one, as objects (they may need arguments,
e.g. the slot holding the user id) or by name (:data:`EXTENSION_METRICS`)::

    metrics = MetricSet(create_metrics({"AUC": 1.0}))
    metrics.add(GroupAUC(group_input="data1", group_slot=0))   # GAUC, uAUC + group counts
    metrics.add("NE")                                          # NE, LogLoss
    metrics.update(preds, labels, loss, batch=batch)           # per evaluation batch
    metrics.results()  # [("AUC", .), ("GAUC", .), ("uAUC", .), ..., ("NE", .), ("LogLoss", .)]

A metric with ``needs_batch = True`` (:class:`GroupAUC`) receives the evaluation batch as
``update(..., batch=batch)``; a metric with a ``results()`` method reports several values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torch import Tensor

from terarec.errors import ConfigError
from terarec.metrics.base import LossLike, Metric
from terarec.metrics.entropy import NormalizedEntropy
from terarec.metrics.group_auc import GroupAUC
from terarec.utils.registry import Registry

__all__ = ["EXTENSION_METRICS", "MetricSet", "resolve_metric"]

#: Name -> class of terarec's extra metrics (names distinct from HugeCTR's ``MetricsType``).
EXTENSION_METRICS: Registry[type[Metric]] = Registry("terarec extension metric")
EXTENSION_METRICS.add("GAUC", GroupAUC, "GroupAUC")
EXTENSION_METRICS.add("NE", NormalizedEntropy, "NormalizedEntropy")


def resolve_metric(metric: Metric | str) -> Metric:
    """A metric object, or a fresh one for an :data:`EXTENSION_METRICS` name (no arguments)."""
    if isinstance(metric, str):
        metric = EXTENSION_METRICS.get(metric, "add_metric(metric=...)")()
    if not isinstance(metric, Metric):
        raise ConfigError("add_metric(metric=...)",
                          "a metric object (update/compute/reset/name) or an extension name",
                          metric)
    if isinstance(metric, GroupAUC) and metric.group_input is None:
        raise ConfigError("add_metric(GroupAUC(...))",
                          "GroupAUC(group_input=<sparse input name>, group_slot=<slot>)",
                          metric, hint="the evaluation loop reads the group id from that slot")
    return metric


class MetricSet(Mapping[str, Metric]):
    """Ordered ``{name: metric}``: the HugeCTR metrics first, then the added extras.

    Args:
        metrics: the HugeCTR metrics (e.g. ``create_metrics(solver.metrics_spec)``).
        extras: more metrics (objects or extension names), added with :meth:`add`.
    """

    def __init__(self, metrics: Mapping[str, Metric] | None = None,
                 extras: Iterable[Metric | str] = ()) -> None:
        self._base: dict[str, Metric] = dict(metrics or {})
        self._extras: dict[str, Metric] = {}
        for m in extras:
            self.add(m)

    def rebuilt(self, metrics: Mapping[str, Metric]) -> MetricSet:
        """A set with new HugeCTR metrics and this set's extras (e.g. at ``compile()``)."""
        return MetricSet(metrics, self._extras.values())

    def add(self, metric: Metric | str) -> Metric:
        """Evaluate ``metric`` too (a :class:`Metric` object or an extension name)."""
        m = resolve_metric(metric)
        if m.name in self._base or m.name in self._extras:
            raise ConfigError("add_metric(metric=...)", f"a metric not evaluated yet ({list(self)})",
                              m.name)
        self._extras[m.name] = m
        return m

    def __getitem__(self, name: str) -> Metric:
        return self._base[name] if name in self._base else self._extras[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from self._extras

    def __len__(self) -> int:
        return len(self._base) + len(self._extras)

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None, *,
               batch: Any = None) -> None:
        """Feed one evaluation batch to every metric (``batch`` to those that need it)."""
        for name, m in self.items():
            if getattr(m, "needs_batch", False):
                if batch is None:
                    raise ConfigError(f"{name}.update", "the evaluation batch (batch=...)", None)
                m.update(preds, labels, loss, batch=batch)  # type: ignore[call-arg]
            else:
                m.update(preds, labels, loss)

    def results(self) -> list[tuple[str, float]]:
        """``[(name, value), ...]`` of every metric (multi-valued ones expanded), then reset."""
        out: list[tuple[str, float]] = []
        for name, m in self.items():
            many = getattr(m, "results", None)
            values = many() if callable(many) else {name: m.compute()}
            out.extend((k, float(v)) for k, v in values.items())
        for m in self.values():
            m.reset()
        return out

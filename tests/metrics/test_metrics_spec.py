"""Registry, create_metrics and MetricsSpec (AUC early stop, strict >)."""

from __future__ import annotations

import pytest

from terarec.enums import MetricsType
from terarec.errors import ConfigError
from terarec.metrics import (
    AUC,
    METRICS,
    NDCG,
    SMAPE,
    AverageLoss,
    HitRate,
    MetricsSpec,
    create_metrics,
)


def test_registry_names() -> None:
    assert METRICS.names() == sorted(["AUC", "AverageLoss", "HitRate", "NDCG", "SMAPE"])
    assert METRICS.get("SMAPE") is SMAPE
    with pytest.raises(ConfigError, match="Did you mean 'HitRate'"):
        METRICS.get("Hitrate")


def test_create_metrics_from_enum_and_strings() -> None:
    metrics = create_metrics({MetricsType.AUC: 0.8, "HitRate": 1.0, MetricsType.NDCG: 1.0})
    assert list(metrics) == ["AUC", "HitRate", "NDCG"]
    assert isinstance(metrics["AUC"], AUC)
    assert isinstance(metrics["HitRate"], HitRate)
    assert isinstance(metrics["NDCG"], NDCG)
    assert list(create_metrics()) == ["AUC"]
    assert isinstance(create_metrics(["AverageLoss"])["AverageLoss"], AverageLoss)
    assert create_metrics({"AUC": 1.0}, distributed=False)["AUC"].distributed is False


def test_spec_parse_and_early_stop() -> None:
    default = MetricsSpec.parse(None)
    assert default.thresholds == {"AUC": 1.0}
    assert not default.should_stop({"AUC": 1.0})  # strict >
    spec = MetricsSpec.parse(["AUC:0.8025", "AverageLoss"])
    assert spec.names == ["AUC", "AverageLoss"]
    assert spec.auc_threshold == pytest.approx(0.8025)
    assert spec.should_stop([("AUC", 0.81), ("AverageLoss", 0.4)])
    assert not spec.should_stop({"AUC": 0.8025})
    assert not spec.should_stop({"AUC": float("nan")})
    assert MetricsSpec.parse({"HitRate": 0.5}).auc_threshold is None
    assert not MetricsSpec.parse({"HitRate": 0.5}).should_stop({"HitRate": 0.9})


@pytest.mark.parametrize(
    "bad",
    [
        {"AUCC": 1.0},
        {"AUC": "high"},
        {"AUC": True},
        {MetricsType.AUC: 1.0, "AUC": 0.5},
        3,
        ["AUC:x"],
    ],
)
def test_spec_errors(bad: object) -> None:
    with pytest.raises(ConfigError):
        MetricsSpec.parse(bad)  # type: ignore[arg-type]

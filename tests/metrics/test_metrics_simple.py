"""HitRate, AverageLoss, NDCG and SMAPE against their hand-written formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from terarec.errors import ConfigError
from terarec.metrics import NDCG, SMAPE, AverageLoss, HitRate, Metric, ndcg


def test_hit_rate_hand_formula() -> None:
    metric = HitRate()
    metric.update(torch.tensor([0.9, 0.85, 0.8, 0.95]), torch.tensor([1.0, 0.0, 1.0, 1.0]))
    metric.update(torch.tensor([[0.81, 0.2], [0.99, 0.5]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    # > 0.8 (strict): 0.9(1) 0.85(0) 0.95(1) 0.81(0) 0.99(1) -> 3 / 5; 0.8 itself is not counted
    assert metric.compute() == pytest.approx(3 / 5)
    metric.reset()
    metric.update(torch.tensor([0.1, 0.8]), torch.tensor([1.0, 1.0]))
    assert metric.compute() == 0.0  # none above 0.8
    assert HitRate().compute() == 0.0


def test_average_loss_weighted_by_batch_size() -> None:
    metric = AverageLoss()
    metric.update(torch.zeros(4), torch.zeros(4), loss=0.5)
    metric.update(torch.zeros(2), torch.zeros(2), loss=torch.tensor(2.0))
    metric.update(torch.zeros(2, 3), torch.zeros(2, 3), loss=torch.tensor([1.0]))
    assert metric.compute() == pytest.approx((4 * 0.5 + 2 * 2.0 + 2 * 1.0) / 8)
    metric.reset()
    assert metric.compute() == 0.0
    with pytest.raises(ConfigError):
        metric.update(torch.zeros(2), torch.zeros(2))


def _ndcg_by_hand(preds: list[float], labels: list[float]) -> float:
    # HugeCTR: stable ascending sort read from the end (later sample first among ties).
    order = sorted(range(len(preds)), key=lambda i: (preds[i], i), reverse=True)
    dcg = sum(labels[i] / math.log2(r + 2) for r, i in enumerate(order))
    ideal = sorted(labels, reverse=True)
    idcg = sum(v / math.log2(r + 2) for r, v in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def test_ndcg_hand_formula() -> None:
    preds = [0.1, 0.9, 0.4, 0.4, 0.7, 0.2]
    labels = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    metric = NDCG()
    metric.update(torch.tensor(preds[:3]), torch.tensor(labels[:3]))
    metric.update(torch.tensor(preds[3:]), torch.tensor(labels[3:]))
    assert metric.compute() == pytest.approx(_ndcg_by_hand(preds, labels), rel=1e-12)
    # rank 0: 0.9 (0), rank 1: 0.7 (1), rank 2/3: 0.4 tie, later (label 0) first -> rank 3 is 1
    dcg = 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(7)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert metric.compute() == pytest.approx(dcg / idcg, rel=1e-12)


def test_ndcg_random_and_edge_cases() -> None:
    gen = np.random.default_rng(0)
    p = np.round(gen.random(300), 2).tolist()
    y = (gen.random(300) < 0.3).astype(float).tolist()
    assert ndcg(torch.tensor(p), torch.tensor(y)) == pytest.approx(_ndcg_by_hand(p, y), rel=1e-9)
    assert NDCG().compute() == 0.0
    no_pos = NDCG()
    no_pos.update(torch.tensor([0.3, 0.6]), torch.tensor([0.0, 0.0]))
    assert no_pos.compute() == 0.0
    perfect = NDCG()
    perfect.update(torch.tensor([0.9, 0.1, 0.8]), torch.tensor([1.0, 0.0, 1.0]))
    assert perfect.compute() == pytest.approx(1.0)


def test_smape_hand_formula() -> None:
    preds = [0.2, 0.9, 0.5, 0.0]
    labels = [0.0, 1.0, 1.0, 0.0]
    metric = SMAPE()
    metric.update(torch.tensor(preds[:2]), torch.tensor(labels[:2]))
    metric.update(torch.tensor([preds[2:]]).t(), torch.tensor([labels[2:]]).t())
    terms = [abs(p - y) / ((p + y) / 2) if p + y else 0.0 for p, y in zip(preds, labels)]
    assert metric.compute() == pytest.approx(sum(terms) / 4, rel=1e-6)
    metric.reset()
    assert metric.compute() == 0.0


@pytest.mark.parametrize("cls", [HitRate, AverageLoss, NDCG, SMAPE])
def test_protocol(cls: type) -> None:
    assert isinstance(cls(), Metric)

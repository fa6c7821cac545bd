"""AUC: equality with scikit-learn's roc_auc_score (ties, random, multi-label), edge cases."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from terarec.errors import ConfigError
from terarec.metrics import AUC, exact_auc

sk_metrics = pytest.importorskip("sklearn.metrics")


def _auc_in_batches(preds: torch.Tensor, labels: torch.Tensor, batch: int) -> AUC:
    metric = AUC()
    for i in range(0, preds.shape[0], batch):
        metric.update(preds[i : i + batch], labels[i : i + batch])
    return metric


TIE_FIXTURES = [
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]),
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]),
    ([0.2, 0.2, 0.7, 0.7, 0.7, 0.1], [1, 0, 0, 1, 1, 0]),
    ([0.9, 0.9, 0.1, 0.1, 0.5, 0.5, 0.5], [0, 1, 1, 0, 1, 0, 0]),
    ([1.0, 0.0, 1.0, 0.0], [1, 0, 0, 1]),
]


@pytest.mark.parametrize(("preds", "labels"), TIE_FIXTURES)
def test_tie_fixtures_match_sklearn(preds: list[float], labels: list[int]) -> None:
    metric = AUC()
    metric.update(torch.tensor(preds), torch.tensor(labels))
    assert metric.compute() == pytest.approx(sk_metrics.roc_auc_score(labels, preds), abs=1e-12)


@pytest.mark.parametrize("levels", [3, 20, 1000, None])
def test_random_with_many_ties_matches_sklearn(levels: int | None) -> None:
    gen = torch.Generator().manual_seed(levels or 7)
    p = torch.rand(20_000, generator=gen)
    y = (torch.rand(20_000, generator=gen) < p).float()
    if levels is not None:
        p = torch.round(p * levels) / levels
    metric = _auc_in_batches(p, y, batch=1024)
    expected = sk_metrics.roc_auc_score(y.numpy(), p.numpy())
    assert metric.compute() == pytest.approx(expected, abs=1e-10)


def test_multilabel_per_class_and_mean() -> None:
    gen = torch.Generator().manual_seed(3)
    p = torch.round(torch.rand(4096, 4, generator=gen) * 10) / 10
    y = (torch.rand(4096, 4, generator=gen) < p).float()
    metric = _auc_in_batches(p, y, batch=500)
    expected = [sk_metrics.roc_auc_score(y[:, i].numpy(), p[:, i].numpy()) for i in range(4)]
    assert metric.compute() == pytest.approx(float(np.mean(expected)), abs=1e-10)
    assert metric.per_class == pytest.approx(expected, abs=1e-10)


def test_label_shape_b1_and_half_precision() -> None:
    p = torch.tensor([0.1, 0.7, 0.7, 0.3], dtype=torch.float16)
    y = torch.tensor([[0], [1], [0], [1]], dtype=torch.int32)
    metric = AUC()
    metric.update(p, y)
    assert metric.compute() == pytest.approx(
        sk_metrics.roc_auc_score(y.reshape(-1).numpy(), p.float().numpy())
    )


def test_single_class_is_nan_and_never_raises() -> None:
    metric = AUC()
    assert math.isnan(metric.compute())  # nothing accumulated
    metric.update(torch.tensor([0.2, 0.9]), torch.tensor([1.0, 1.0]))
    assert math.isnan(metric.compute())
    custom = AUC(single_class_value=0.5)
    custom.update(torch.tensor([0.2, 0.9]), torch.tensor([0.0, 0.0]))
    assert custom.compute() == 0.5
    both = exact_auc(torch.tensor([[0.1, 0.1], [0.9, 0.2]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    assert both[0].item() == 1.0
    assert math.isnan(both[1].item())


def test_reset_and_errors() -> None:
    metric = AUC()
    metric.update(torch.tensor([0.9, 0.1]), torch.tensor([0.0, 1.0]))
    assert metric.compute() == 0.0
    metric.reset()
    metric.update(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0]))
    assert metric.compute() == 1.0
    with pytest.raises(ConfigError):
        metric.update(torch.rand(4, 2), torch.rand(4, 2))  # column count changed
    with pytest.raises(ConfigError):
        metric.update(torch.rand(4), torch.rand(5))


def test_cpu_is_vectorised_for_1m() -> None:
    p = torch.rand(1_000_000)
    y = (torch.rand(1_000_000) < 0.25).float()
    start = time.perf_counter()
    exact_auc(p, y)
    assert time.perf_counter() - start < 5.0


@pytest.mark.gpu
def test_cuda_matches_cpu_and_is_fast() -> None:
    p = torch.round(torch.rand(1_000_000) * 1000) / 1000
    y = (torch.rand(1_000_000) < p).float()
    expected = exact_auc(p, y).item()
    pc, yc = p.cuda(), y.cuda()
    metric = AUC()
    for i in range(0, pc.shape[0], 65536):
        metric.update(pc[i : i + 65536], yc[i : i + 65536])
    assert metric.compute() == pytest.approx(expected, abs=1e-10)
    exact_auc(pc, yc)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    exact_auc(pc, yc).item()
    assert time.perf_counter() - start < 0.1

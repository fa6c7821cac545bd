"""exact_auc vs scikit-learn / a brute-force pair count, and the backend selection rules."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import HAS_TRITON, K


def auc_pairs(p: torch.Tensor, y: torch.Tensor) -> float:
    pos, neg = p[y > 0.5].double(), p[y <= 0.5].double()
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_exact_auc(device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    p = (torch.rand(2000, generator=gen) * 20).round() / 20  # many ties
    y = (torch.rand(2000, generator=gen) < p).float()
    got = K.exact_auc(p.to(device), y.to(device))
    assert abs(got - auc_pairs(p, y)) < 1e-12
    sk = pytest.importorskip("sklearn.metrics")
    assert abs(got - sk.roc_auc_score(y.numpy(), p.numpy())) < 1e-12
    assert K.exact_auc(p, torch.zeros(2000)) != K.exact_auc(p, torch.zeros(2000))  # NaN


def test_select_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.empty(0)
    monkeypatch.delenv("TERAREC_KERNELS", raising=False)
    assert K.backend_for(cpu) == "torch"  # auto: Triton only for CUDA tensors
    with K.use_triton(False):
        assert K.backend_for(cpu) == "torch"
    monkeypatch.setenv("TERAREC_KERNELS", "torch")
    assert K.backend_for(cpu) == "torch"
    monkeypatch.setenv("TERAREC_KERNELS", "bogus")
    with pytest.raises(ValueError, match="TERAREC_KERNELS"):
        K.backend_for(cpu)
    monkeypatch.setenv("TERAREC_KERNELS", "triton")
    if HAS_TRITON:
        assert K.backend_for(cpu) == "triton"
        with K.use_triton(False):
            assert K.backend_for(cpu) == "torch"
    else:
        with pytest.raises(RuntimeError, match="Triton"):
            K.backend_for(cpu)


@pytest.mark.gpu
def test_select_auto_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TERAREC_KERNELS", raising=False)
    want = "triton" if HAS_TRITON else "torch"
    assert K.backend_for(torch.empty(0, device="cuda")) == want

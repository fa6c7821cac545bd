"""relu_bias_backward (fused ReLU backward + bias gradient) vs float64 formulas."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import HAS_TRITON, K, rel_err


@pytest.mark.parametrize(("b", "n"), [(1, 5), (700, 130), (1030, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_bias_backward(dev: torch.device, b: int, n: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(b + n)
    grad = torch.randn(b, n, generator=gen).to(dtype)
    y = torch.relu(torch.randn(b, n, generator=gen)).to(dtype)
    g, db = K.relu_bias_backward(grad.to(dev), y.to(dev))
    ref_g = grad.double() * (y.double() > 0)
    assert g.dtype == dtype and db.dtype == dtype and db.shape == (n,)
    assert torch.equal(g.cpu().double(), ref_g)  # a mask: exact
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_err(db.cpu(), ref_g.sum(0)) < tol


def test_relu_bias_backward_rejects_mismatched_shapes(dev: torch.device) -> None:
    with pytest.raises(ValueError, match="relu_bias_backward"):
        K.relu_bias_backward(torch.zeros(4, 3, device=dev), torch.zeros(4, 2, device=dev))


@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 5), (200, 1, 300), (70, 3, 40), (64, 32, 64),
                                            (100, 40, 70), (257, 128, 96)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_relu_dgrad(dev: torch.device, m: int, n: int, k: int,
                           dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(m + n + k)
    grad = torch.randn(m, n, generator=gen).to(dtype)
    weight = torch.randn(k, n, generator=gen).to(dtype)
    y = torch.relu(torch.randn(m, k, generator=gen)).to(dtype)
    g, db = K.linear_relu_dgrad(grad.to(dev), weight.to(dev), y.to(dev))
    ref_g = (grad.double() @ weight.double().t()) * (y.double() > 0)
    assert g.shape == (m, k) and g.dtype == dtype and db.dtype == dtype and db.shape == (k,)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_err(g.cpu(), ref_g) < tol
    assert bool((g.cpu()[y <= 0] == 0).all())  # the mask is exact
    assert rel_err(db.cpu(), g.cpu().double().sum(0)) < tol


def test_linear_relu_dgrad_rejects_mismatched_shapes(dev: torch.device) -> None:
    with pytest.raises(ValueError, match="linear_relu_dgrad"):
        K.linear_relu_dgrad(torch.zeros(4, 3, device=dev), torch.zeros(5, 2, device=dev),
                            torch.zeros(4, 5, device=dev))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA + Triton")
@pytest.mark.parametrize("tma", [True, False])
def test_linear_relu_dgrad_launch_variants(tma: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from terarec.kernels import triton_mlp

    monkeypatch.setattr(triton_mlp, "DGRAD_TMA", tma)
    gen = torch.Generator(device="cuda").manual_seed(3)
    grad = torch.randn(1000, 256, device="cuda", generator=gen).bfloat16()  # 1000: a ragged tile
    weight = torch.randn(384, 256, device="cuda", generator=gen).bfloat16()
    y = torch.relu(torch.randn(1000, 384, device="cuda", generator=gen)).bfloat16()
    g, db = triton_mlp.linear_relu_dgrad(grad, weight, y)
    ref_g = (grad.double() @ weight.double().t()) * (y.double() > 0)
    assert rel_err(g, ref_g) < 1e-2
    assert rel_err(db, g.double().sum(0)) < 1e-2

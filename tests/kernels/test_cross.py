"""cross_forward / cross_backward (the DCN cross update, one pass each) vs float64 formulas."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import K, rel_err

SHAPES = [(1, 5), (70, 130), (1030, 64)]  # 1030 rows: three backward row blocks of 512


def _inputs(b: int, n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen).to(dtype)
            for shape in ((b, n), (b, n), (1, n), (b, n))]


@pytest.mark.parametrize(("b", "n"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_forward(dev: torch.device, b: int, n: int, dtype: torch.dtype) -> None:
    x0, u, bias, x = _inputs(b, n, dtype, b + n)
    y = K.cross_forward(x0.to(dev), u.to(dev), bias.to(dev), x.to(dev))
    ref = x0.double() * (u.double() + bias.double()) + x.double()
    assert y.dtype == dtype and y.shape == (b, n)
    assert rel_err(y, ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    # First layer: x is x0 (the kernel then reads it once); same result as an equal copy.
    x0d = x0.to(dev)
    y0 = K.cross_forward(x0d, u.to(dev), bias.to(dev), x0d.clone())
    y1 = K.cross_forward(x0d, u.to(dev), bias.to(dev), x0d)
    ref0 = x0.double() * (u.double() + bias.double()) + x0.double()
    assert rel_err(y0, ref0) < (1e-6 if dtype == torch.float32 else 1e-2)
    assert torch.equal(y0.cpu(), y1.cpu())


@pytest.mark.parametrize(("b", "n"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("has_dx0", "add_grad"), [(False, False), (True, False), (True, True),
                                                   (False, True)])
def test_cross_backward(dev: torch.device, b: int, n: int, dtype: torch.dtype, has_dx0: bool,
                        add_grad: bool) -> None:
    g, x0, bias, u = _inputs(b, n, dtype, 7 * b + n)
    dx0_in = torch.randn(b, n, generator=torch.Generator().manual_seed(1)).to(dtype)
    dx0_d = dx0_in.to(dev, copy=True) if has_dx0 else None
    du, dx0, db = K.cross_backward(g.to(dev), x0.to(dev), u.to(dev), bias.to(dev), dx0_d,
                                   add_grad)
    if has_dx0:
        assert dx0 is dx0_d  # accumulated in place
    gd, x0d = g.double(), x0.double()
    ref_du = gd * x0d
    ref_dx0 = gd * (u.double() + bias.double())
    if has_dx0:
        ref_dx0 = ref_dx0 + dx0_in.double()
    if add_grad:
        ref_dx0 = ref_dx0 + gd
    assert du.dtype == dtype and dx0.dtype == dtype and db.dtype == dtype and db.shape == (n,)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_err(du, ref_du) < tol
    assert rel_err(dx0, ref_dx0) < tol
    assert rel_err(db, ref_du.sum(0)) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_cross_backward_deterministic(dev: torch.device) -> None:
    g, x0, bias, u = _inputs(1100, 70, torch.float32, 5)
    args = [t.to(dev) for t in (g, x0, u, bias)]
    first = K.cross_backward(*args)
    second = K.cross_backward(*args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cross_rejects_mismatched_shapes(dev: torch.device) -> None:
    x0 = torch.zeros(4, 3, device=dev)
    with pytest.raises(ValueError, match="cross"):
        K.cross_forward(x0, torch.zeros(4, 2, device=dev), torch.zeros(3, device=dev), x0)
    with pytest.raises(ValueError, match="bias"):
        K.cross_forward(x0, x0, torch.zeros(2, device=dev), x0)
    with pytest.raises(ValueError, match="cross"):
        K.cross_backward(x0.double(), x0, x0, torch.zeros(3, device=dev))

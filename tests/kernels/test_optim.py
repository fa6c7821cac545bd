"""Stand-alone sparse optimizer updates and stochastic rounding vs float64 formulas."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import HYPER, K, random_states, rel_err, rule64


def _call(opt: str, w: torch.Tensor, st: list[torch.Tensor], rows: torch.Tensor,
          g: torch.Tensor, lr: float, **kw: object) -> None:
    h = HYPER
    if opt == "sgd":
        K.sgd_update(w, rows, g, lr, **kw)
    elif opt == "momentum":
        K.momentum_update(w, st[0], rows, g, lr, h["momentum_factor"], **kw)
    elif opt == "nesterov":
        K.nesterov_update(w, st[0], rows, g, lr, h["momentum_factor"], **kw)
    elif opt == "adagrad":
        K.adagrad_update(w, st[0], rows, g, lr, h["epsilon"], **kw)
    elif opt == "adam":
        K.adam_update(w, st[0], st[1], rows, g, lr, h["beta1"], h["beta2"], h["epsilon"],
                      h["step"], **kw)
    else:
        K.ftrl_update(w, st[0], st[1], rows, g, lr, h["lambda1"], h["lambda2"], **kw)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "nesterov", "adagrad", "adam", "ftrl"])
@pytest.mark.parametrize("dim", [16, 100])
def test_update_rules(dev: torch.device, opt: str, dim: int) -> None:
    gen = torch.Generator().manual_seed(dim)
    n_rows, lr = 50, 0.03
    weight = torch.randn(n_rows, dim, generator=gen)
    states = random_states(opt, (n_rows, dim), gen)
    rows = torch.randperm(n_rows, generator=gen)[:17]
    g = torch.randn(17, dim, generator=gen)
    w_d = weight.to(dev, copy=True)
    st_d = [s.to(dev, copy=True) for s in states]
    _call(opt, w_d, st_d, rows.to(dev), g.to(dev), lr)
    w_ref, st_ref = rule64(opt, weight[rows], [s[rows] for s in states], g, lr, HYPER)
    assert rel_err(w_d.cpu()[rows], w_ref) < 1e-5
    for s_d, s_ref in zip(st_d, st_ref):
        assert rel_err(s_d.cpu()[rows], s_ref) < 1e-5
    rest = torch.ones(n_rows, dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(w_d.cpu()[rest], weight[rest])
    for s_d, s in zip(st_d, states):
        assert torch.equal(s_d.cpu()[rest], s[rest])


@pytest.mark.parametrize("sr", [False, True])
def test_bf16_weights(dev: torch.device, sr: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 16, generator=gen)
    rows = torch.randperm(40, generator=gen)[:10]
    g = torch.randn(10, 16, generator=gen)
    acc = torch.rand(40, 16, generator=gen) + 0.1
    w_d = weight.to(dev, torch.bfloat16)
    acc_d = acc.to(dev, copy=True)
    _call("adagrad", w_d, [acc_d], rows.to(dev), g.to(dev), 0.1, stochastic_rounding=sr, seed=7)
    w_ref, _ = rule64("adagrad", weight.bfloat16().float()[rows], [acc[rows]], g, 0.1, HYPER)
    assert w_d.dtype == torch.bfloat16
    assert rel_err(w_d.float().cpu()[rows], w_ref) < 1e-2


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just toward and just away from zero of float32 ``x``."""
    bits = x.view(torch.int32)
    down = (bits & -65536).view(torch.float32)
    up = ((bits & -65536) + 65536).view(torch.float32)
    return down, up


def test_stochastic_round_to_bf16(dev: torch.device) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3000, generator=gen) * 10
    y = K.stochastic_round_to_bf16(x.to(dev), seed=11).float().cpu()
    down, up = _neighbours(x)
    exact = down == x
    assert bool(((y == down) | ((y == up) & ~exact)).all())
    # unbiased: 1 + a third of a bf16 ulp rounds up about a third of the time
    one_third = torch.full((4096,), 1.0 + (2.0**-7) / 3.0)
    z = K.stochastic_round_to_bf16(one_third.to(dev), seed=5).float().cpu()
    frac_up = float((z > 1.0).double().mean())
    assert abs(frac_up - 1.0 / 3.0) < 0.04
    assert abs(float(z.double().mean()) - float(one_third[0])) < 2e-4

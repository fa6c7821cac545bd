"""HugeCTR dense optimizers against hand-written numpy formulas; the _opt_dense file layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from terarec.optim import OptimizerConfig, make_dense_optimizer
from terarec.optim.dense import DENSE_OPTIMIZERS, Adam

CFG = dict(momentum_factor=0.8, beta1=0.85, beta2=0.99, epsilon=1e-6, initial_accu_value=0.05,
           lambda1=0.02, lambda2=0.01, beta=0.9)


def formula(name: str, w: np.ndarray, s: dict, g: np.ndarray, lr: float, t: int) -> np.ndarray:
    """Reference §5.2, written out in float64."""
    c = CFG
    if name == "SGD":
        return w - lr * g
    if name == "MomentumSGD":
        s["m"] = c["momentum_factor"] * s.get("m", 0.0) - lr * g
        return w + s["m"]
    if name == "Nesterov":
        a = s.get("a", np.zeros_like(w))
        mu = c["momentum_factor"]
        s["a"] = mu * a - lr * g
        return w - mu * a + (1 + mu) * s["a"]
    if name == "Adam":
        s["m"] = c["beta1"] * s.get("m", 0.0) + (1 - c["beta1"]) * g
        s["v"] = c["beta2"] * s.get("v", 0.0) + (1 - c["beta2"]) * g * g
        step = lr * math.sqrt(1 - c["beta2"] ** t) / (1 - c["beta1"] ** t)
        return w - step * s["m"] / (np.sqrt(s["v"]) + c["epsilon"])
    if name == "AdaGrad":
        s["s"] = s.get("s", c["initial_accu_value"]) + g * g
        return w - lr * g / (c["epsilon"] + np.sqrt(s["s"]))
    if name == "Ftrl":
        n = s.get("n", np.zeros_like(w))
        n2 = n + g * g
        s["z"] = s.get("z", 0.0) + g + (np.sqrt(n) - np.sqrt(n2)) * w / lr
        s["n"] = n2
        z = s["z"]
        out = (c["lambda1"] * np.sign(z) - z) / (np.sqrt(n2) / lr + c["lambda2"])
        return np.where(np.abs(z) > c["lambda1"], out, 0.0)
    if name == "RMSProp":
        s["v"] = c["beta"] * s.get("v", 0.0) + (1 - c["beta"]) * g * g
        return w - lr * g / (np.sqrt(s["v"]) + c["epsilon"])
    raise AssertionError(name)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(DENSE_OPTIMIZERS.names()))
def test_dense_optimizer_matches_formula(name: str, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 4, generator=g).to(device), torch.randn(5, generator=g).to(device)]
    params = [p.requires_grad_() for p in params]
    refs = [p.detach().cpu().double().numpy().copy() for p in params]
    states: list[dict] = [{}, {}]
    opt = make_dense_optimizer(OptimizerConfig(type=name, **CFG), params, scaler=8.0)
    assert isinstance(opt, DENSE_OPTIMIZERS.get(name))
    for t in range(1, 6):
        lr = 0.01 * t
        opt.set_lr(lr)
        grads = [torch.randn(p.shape, generator=g) * 8.0 for p in params]
        for p, gr in zip(params, grads):
            p.grad = gr.to(device)
        opt.step()
        for i, gr in enumerate(grads):
            refs[i] = formula(name, refs[i], states[i], gr.cpu().double().numpy() / 8.0, lr, t)
    for p, r in zip(params, refs):
        np.testing.assert_allclose(p.detach().cpu().numpy(), r, rtol=1e-5, atol=1e-6)


def test_adam_state_file_layout_and_round_trip() -> None:
    a, b = torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = Adam([a, b])
    assert opt.state_to_flat().size == 2 * 10  # states exist before the first step
    a.grad, b.grad = torch.ones(2, 3), torch.full((4,), 2.0)
    opt.set_lr(0.1)
    opt.step()
    flat = opt.state_to_flat()
    m = np.concatenate([np.full(6, 0.1), np.full(4, 0.2)])
    v = np.concatenate([np.full(6, 0.001), np.full(4, 0.004)])
    np.testing.assert_allclose(flat, np.concatenate([m, v]), rtol=1e-6)
    tensors = opt.state_tensors_in_file_order()
    assert [tuple(t.shape) for t in tensors] == [(2, 3), (4,), (2, 3), (4,)]

    other = Adam([torch.zeros(2, 3), torch.zeros(4)])
    other.load_state_from_flat(flat.astype("<f4").tobytes())
    np.testing.assert_array_equal(other.state_to_flat(), flat)
    with pytest.raises(ValueError, match="20 float32 values"):
        other.load_state_from_flat(flat[:-1])


def test_sgd_state_file_is_empty_and_none_grad_is_zero_step() -> None:
    p = torch.ones(3, requires_grad=True)
    sgd = make_dense_optimizer(OptimizerConfig(type="SGD"), [p])
    assert sgd.state_to_flat().size == 0
    sgd.step()
    assert torch.equal(p.detach(), torch.ones(3))
    q = torch.ones(3, requires_grad=True)
    mom = make_dense_optimizer(OptimizerConfig(type="MomentumSGD", momentum_factor=0.5), [q])
    q.grad = torch.ones(3)
    mom.set_lr(1.0)
    mom.step()  # m = -1, w = 0
    q.grad = None
    mom.step()  # HugeCTR updates the whole buffer: m = -0.5, w = -0.5
    assert torch.allclose(q.detach(), torch.full((3,), -0.5))


def test_state_dict_keeps_step_counter() -> None:
    p = torch.ones(2, requires_grad=True)
    opt = Adam([p])
    p.grad = torch.ones(2)
    opt.step()
    opt.step()
    fresh = Adam([torch.ones(2, requires_grad=True)])
    fresh.load_state_dict(opt.state_dict())
    assert fresh.t == 2
    torch.testing.assert_close(fresh.state_to_flat(), opt.state_to_flat())


def test_type_mismatch_and_unknown_type() -> None:
    with pytest.raises(ValueError, match="Adam"):
        Adam([torch.zeros(1)], OptimizerConfig(type="SGD"))
    cfg = OptimizerConfig(type="SGD")
    object.__setattr__(cfg, "type", "Adamm")
    with pytest.raises(ValueError, match="Did you mean 'Adam'"):
        make_dense_optimizer(cfg, [torch.zeros(1)])

"""HugeCTR's per-element optimizer update rules, shared by the dense optimizers and sparse tables.

Owns the formulas of reference §5.2 and nothing else: no parameters, no state allocation, no
file layout. A rule updates lists of tensors in place with ``torch._foreach_*`` kernels, so the
dense optimizers update all their parameters with a handful of launches and a sparse table
calls the same code on the rows hit this step (a one-element list).

``g`` is already divided by the loss scaler. ``g=None`` means "a step with zero gradient",
the step HugeCTR's Global update applies to rows that were not hit.

Every rule is registered in :data:`UPDATE_RULES` under the HugeCTR optimizer type name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from terarec.optim.config import OptimizerConfig
from terarec.utils.registry import Registry

Tensors = list[torch.Tensor]
StepFn = Callable[[Tensors, list[Tensors], "Tensors | None", float, OptimizerConfig, int], None]
LazyFn = Callable[
    [torch.Tensor, Tensors, torch.Tensor, torch.Tensor, float, OptimizerConfig, int], None
]


@dataclass(frozen=True)
class UpdateRule:
    """One optimizer's update rule.

    Attributes:
        name: HugeCTR ``Optimizer_t`` name.
        state_names: names of the per-weight states, in HugeCTR's state-file order.
        initial_values: ``cfg -> value`` of each state at creation (AdaGrad: initial_accu_value).
        step: ``step(w, states, g, lr, cfg, t)`` one update of step ``t`` (1-based).
        zero_step_changes: True when a zero-gradient step changes weights or states; only then
            does a Global sparse update touch rows that were not hit.
        lazy: ``lazy(w, states, g, last, lr, cfg, t)`` the LazyGlobal update of hit rows
            (``w`` [R, D], ``last`` int64 [R] = step of each row's previous update, 0 = never).
    """

    name: str
    state_names: tuple[str, ...]
    initial_values: Callable[[OptimizerConfig], tuple[float, ...]]
    step: StepFn
    zero_step_changes: bool
    lazy: LazyFn


UPDATE_RULES: Registry[UpdateRule] = Registry("optimizer type")


def _zeros(cfg: OptimizerConfig) -> tuple[float, ...]:
    return ()


def _geometric(f: float, k: torch.Tensor) -> torch.Tensor:
    """sum_{i=1..k} f**i for an int tensor ``k`` (float result shaped like ``k``)."""
    kf = k.to(torch.float64)
    if f == 1.0:
        return kf
    return f * (1.0 - torch.pow(torch.full_like(kf, f), kf)) / (1.0 - f)


def _pow(f: float, k: torch.Tensor) -> torch.Tensor:
    return torch.pow(torch.full_like(k, f, dtype=torch.float64), k.to(torch.float64))


def _skipped(last: torch.Tensor, t: int) -> torch.Tensor:
    """Number of steps strictly between a row's previous update and step ``t``."""
    return (t - 1 - last).clamp(min=0)


def _local_lazy(step: StepFn) -> LazyFn:
    """LazyGlobal for rules whose zero-gradient step is a no-op: the plain step on hit rows."""

    def lazy(w, states, g, last, lr, cfg, t):  # noqa: ANN001, ANN202
        step([w], [[s] for s in states], [g], lr, cfg, t)

    return lazy


# --- SGD --------------------------------------------------------------------------------------
def _sgd_step(w: Tensors, states: list[Tensors], g: Tensors | None, lr: float | torch.Tensor,
              cfg: OptimizerConfig, t: int) -> None:
    if g is None:
        return
    if isinstance(lr, torch.Tensor):  # device-side rate (a step captured in a CUDA graph)
        torch._foreach_sub_(w, torch._foreach_mul(g, lr))
    else:
        torch._foreach_add_(w, g, alpha=-lr)


UPDATE_RULES.add("SGD", UpdateRule("SGD", (), _zeros, _sgd_step, False, _local_lazy(_sgd_step)))


# --- MomentumSGD: m = f*m - lr*g; w += m --------------------------------------------------------
def _momentum_step(w: Tensors, states: list[Tensors], g: Tensors | None, lr: float,
                   cfg: OptimizerConfig, t: int) -> None:
    (m,) = states
    torch._foreach_mul_(m, cfg.momentum_factor)
    if g is not None:
        torch._foreach_add_(m, g, alpha=-lr)
    torch._foreach_add_(w, m)


def _momentum_lazy(w, states, g, last, lr, cfg, t):  # noqa: ANN001, ANN202
    # k skipped zero-gradient steps: w += m * (f + f^2 + ... + f^k); m *= f^k (exact).
    (m,) = states
    f = cfg.momentum_factor
    k = _skipped(last, t)
    w.add_(m * _geometric(f, k).to(w.dtype).unsqueeze(1))
    m.mul_(_pow(f, k).to(m.dtype).unsqueeze(1))
    _momentum_step([w], [[m]], [g], lr, cfg, t)


UPDATE_RULES.add("MomentumSGD", UpdateRule(
    "MomentumSGD", ("momentum",), lambda c: (0.0,), _momentum_step, True, _momentum_lazy))


# --- Nesterov: a' = mu*a - lr*g; w += -mu*a + (1+mu)*a' ----------------------------------------
def _nesterov_step(w: Tensors, states: list[Tensors], g: Tensors | None, lr: float,
                   cfg: OptimizerConfig, t: int) -> None:
    (a,) = states
    mu = cfg.momentum_factor
    torch._foreach_add_(w, a, alpha=-mu)
    torch._foreach_mul_(a, mu)
    if g is not None:
        torch._foreach_add_(a, g, alpha=-lr)
    torch._foreach_add_(w, a, alpha=1.0 + mu)


def _nesterov_lazy(w, states, g, last, lr, cfg, t):  # noqa: ANN001, ANN202
    # One zero-gradient step moves w by mu^2 * a and scales a by mu; k of them in closed form.
    (a,) = states
    mu = cfg.momentum_factor
    k = _skipped(last, t)
    w.add_(a * (mu * _geometric(mu, k)).to(w.dtype).unsqueeze(1))
    a.mul_(_pow(mu, k).to(a.dtype).unsqueeze(1))
    _nesterov_step([w], [[a]], [g], lr, cfg, t)


UPDATE_RULES.add("Nesterov", UpdateRule(
    "Nesterov", ("accum",), lambda c: (0.0,), _nesterov_step, True, _nesterov_lazy))


# --- Adam ---------------------------------------------------------------------------------------
def adam_alpha(lr: float, cfg: OptimizerConfig, t: int) -> float:
    """HugeCTR's bias-corrected step size lr * sqrt(1 - beta2^t) / (1 - beta1^t)."""
    return lr * math.sqrt(1.0 - cfg.beta2**t) / (1.0 - cfg.beta1**t)


def _adam_step(w: Tensors, states: list[Tensors], g: Tensors | None, lr: float,
               cfg: OptimizerConfig, t: int) -> None:
    m, v = states
    torch._foreach_mul_(m, cfg.beta1)
    torch._foreach_mul_(v, cfg.beta2)
    if g is not None:
        torch._foreach_add_(m, g, alpha=1.0 - cfg.beta1)
        torch._foreach_addcmul_(v, g, g, value=1.0 - cfg.beta2)
    denom = torch._foreach_sqrt(v)
    torch._foreach_add_(denom, cfg.epsilon)
    torch._foreach_addcdiv_(w, m, denom, value=-adam_alpha(lr, cfg, t))


def _adam_lazy(w, states, g, last, lr, cfg, t):  # noqa: ANN001, ANN202
    """HugeCTR's LazyGlobal Adam (``opt_adam_kernel_lazy``).

    The weight lags one hit behind: at this hit it moves by the update its moments asked for at
    its previous hit ``p`` plus the skipped steps, approximated as
    ``lr/(1-b1) * sqrt(1-b2^p)/(1-b1^p) * (1-b1^s) * m/(sqrt(v)+eps)`` with ``s = t - p``;
    then the moments catch up the skipped decay (``b^s``) and take this step's gradient.
    HugeCTR starts every row at ``p = 1``.
    """
    m, v = states
    p = last.clamp(min=1)
    s = (t - p).to(torch.float64)
    b1, b2 = cfg.beta1, cfg.beta2
    pf = p.to(torch.float64)
    b1_s = torch.pow(torch.full_like(s, b1), s)
    bias = torch.sqrt(1.0 - torch.pow(torch.full_like(pf, b2), pf)) / (
        1.0 - torch.pow(torch.full_like(pf, b1), pf))
    alpha = (lr / (1.0 - b1)) * bias * (1.0 - b1_s)
    w.sub_(alpha.to(w.dtype).unsqueeze(1) * m / (v.sqrt() + cfg.epsilon))
    m.mul_(b1_s.to(m.dtype).unsqueeze(1)).add_(g, alpha=1.0 - b1)
    v.mul_(torch.pow(torch.full_like(s, b2), s).to(v.dtype).unsqueeze(1))
    v.addcmul_(g, g, value=1.0 - b2)


UPDATE_RULES.add("Adam", UpdateRule(
    "Adam", ("m", "v"), lambda c: (0.0, 0.0), _adam_step, True, _adam_lazy))


# --- AdaGrad: s += g^2; w -= lr*g/(eps + sqrt(s)) ---------------------------------------------
def _adagrad_step(w: Tensors, states: list[Tensors], g: Tensors | None, lr: float,
                  cfg: OptimizerConfig, t: int) -> None:
    if g is None:
        return
    (acc,) = states
    torch._foreach_addcmul_(acc, g, g)
    denom = torch._foreach_sqrt(acc)
    torch._foreach_add_(denom, cfg.epsilon)
    torch._foreach_addcdiv_(w, g, denom, value=-lr)


UPDATE_RULES.add("AdaGrad", UpdateRule(
    "AdaGrad", ("accum",), lambda c: (c.initial_accu_value,), _adagrad_step, False,
    _local_lazy(_adagrad_step)))


# --- Ftrl (n then z); ``beta`` is accepted but unused, as in HugeCTR's kernel --------------------
def _ftrl_step(w: Tensors, states: list[Tensors], g: Tensors | None, lr: float,
               cfg: OptimizerConfig, t: int) -> None:
    if g is None:
        return
    n_list, z_list = states
    for wi, n, z, gi in zip(w, n_list, z_list, g):
        n_new = n + gi * gi
        sqrt_new = n_new.sqrt()
        z.add_(gi + (n.sqrt() - sqrt_new) * wi / lr)
        n.copy_(n_new)
        shrunk = (cfg.lambda1 * torch.sign(z) - z) / (sqrt_new / lr + cfg.lambda2)
        wi.copy_(torch.where(z.abs() > cfg.lambda1, shrunk, torch.zeros_like(shrunk)))


UPDATE_RULES.add("Ftrl", UpdateRule(
    "Ftrl", ("n", "z"), lambda c: (0.0, 0.0), _ftrl_step, False, _local_lazy(_ftrl_step)))


# --- RMSProp (HugeCTR hyperparams rmsprop.beta <- ``beta``, rmsprop.epsilon <- ``epsilon``) -------
def _rmsprop_step(w: Tensors, states: list[Tensors], g: Tensors | None, lr: float,
                  cfg: OptimizerConfig, t: int) -> None:
    (v,) = states
    torch._foreach_mul_(v, cfg.beta)
    if g is None:
        return
    torch._foreach_addcmul_(v, g, g, value=1.0 - cfg.beta)
    denom = torch._foreach_sqrt(v)
    torch._foreach_add_(denom, cfg.epsilon)
    torch._foreach_addcdiv_(w, g, denom, value=-lr)


def _rmsprop_lazy(w, states, g, last, lr, cfg, t):  # noqa: ANN001, ANN202
    (v,) = states
    v.mul_(_pow(cfg.beta, _skipped(last, t)).to(v.dtype).unsqueeze(1))
    _rmsprop_step([w], [[v]], [g], lr, cfg, t)


UPDATE_RULES.add("RMSProp", UpdateRule(
    "RMSProp", ("v",), lambda c: (0.0,), _rmsprop_step, True, _rmsprop_lazy))


def get_rule(optimizer_type: str) -> UpdateRule:
    """The rule registered for a HugeCTR optimizer type name (error lists the known names)."""
    return UPDATE_RULES.get(optimizer_type, "optimizer_type")

"""HugeCTR's dense optimizers as ``torch.optim.Optimizer`` subclasses.

Owns the dense-weight update (formulas come from :mod:`terarec.optim.rules`) and the byte layout
of HugeCTR's ``{prefix}_opt_dense_{iter}.model`` file (reference §17.3): the optimizer's states
in state order, each over the whole dense weight buffer in parameter order (Adam: all ``m``, then
all ``v``; Ftrl: ``n`` then ``z``; SGD: nothing), raw float32.

Differences from ``torch.optim``, all on purpose to match HugeCTR:

* the learning rate comes from the solver / scheduler each step (:meth:`set_lr`);
* gradients are divided by ``scaler`` (the loss-scaling factor) before the update;
* HugeCTR updates the whole dense buffer every iteration, so a parameter whose ``.grad`` is
  ``None`` takes a zero-gradient step (for Adam/momentum the weight still moves);
* states exist from construction, so the state file can be written before the first step;
* the step counter ``t`` (Adam's bias correction) is one counter for the whole optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from terarec.errors import ConfigError
from terarec.optim.config import OptimizerConfig
from terarec.optim.rules import UpdateRule, get_rule
from terarec.utils.registry import Registry

DENSE_OPTIMIZERS: Registry[type[HugeCTRDenseOptimizer]] = Registry("dense optimizer type")


class HugeCTRDenseOptimizer(torch.optim.Optimizer):
    """Base class: one HugeCTR rule applied to all parameters with foreach kernels.

    Args:
        params: parameters (or param groups) in HugeCTR's dense-buffer order.
        config: hyper-parameters; its ``type`` must match the subclass (default: the subclass's).
        lr: initial learning rate (normally overwritten by :meth:`set_lr` each step).
        scaler: loss-scaling factor; gradients are divided by it.
    """

    optimizer_type: str = ""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        config: OptimizerConfig | None = None,
        lr: float = 0.001,
        scaler: float = 1.0,
    ) -> None:
        cfg = config if config is not None else OptimizerConfig(type=self.optimizer_type)
        if cfg.type != self.optimizer_type:
            raise ConfigError(f"{type(self).__name__}(config=...)",
                              f"an OptimizerConfig of type {self.optimizer_type!r}", cfg.type)
        if scaler <= 0:
            raise ConfigError(f"{type(self).__name__}(scaler=...)", "a positive number", scaler)
        super().__init__(params, {"lr": float(lr)})
        self.config = cfg
        self.rule: UpdateRule = get_rule(cfg.type)
        self.scaler = float(scaler)
        self.t = 0
        init = self.rule.initial_values(cfg)
        for p in self._params():
            st = self.state[p]
            for name, value in zip(self.rule.state_names, init):
                st[name] = torch.full_like(p, value, memory_format=torch.contiguous_format)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every param group (HugeCTR: from the solver/scheduler)."""
        for group in self.param_groups:
            group["lr"] = float(lr)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.t += 1
        for group in self.param_groups:
            params = list(group["params"])
            if not params:
                continue
            grads = [
                torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params
            ]
            if self.scaler != 1.0:
                grads = torch._foreach_div(grads, self.scaler)
            states = [[self.state[p][n] for p in params] for n in self.rule.state_names]
            self.rule.step(params, states, grads, group["lr"], self.config, self.t)
        return loss

    # --- HugeCTR state file ---------------------------------------------------------------------
    def state_tensors_in_file_order(self) -> list[torch.Tensor]:
        """State tensors in ``_opt_dense_N.model`` order: per state name, every parameter."""
        params = self._params()
        return [self.state[p][n] for n in self.rule.state_names for p in params]

    def state_to_flat(self) -> np.ndarray:
        """The ``_opt_dense_N.model`` content as one float32 array (empty for SGD)."""
        tensors = self.state_tensors_in_file_order()
        if not tensors:
            return np.zeros(0, dtype=np.float32)
        return torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors]).numpy()

    def load_state_from_flat(self, flat: np.ndarray | bytes) -> None:
        """Load states from ``_opt_dense_N.model`` content (float32 array or raw bytes)."""
        arr = np.frombuffer(flat, dtype="<f4") if isinstance(flat, (bytes, bytearray)) \
            else np.asarray(flat, dtype=np.float32).reshape(-1)
        tensors = self.state_tensors_in_file_order()
        expected = sum(t.numel() for t in tensors)
        if arr.size != expected:
            raise ConfigError(
                f"{self.optimizer_type} dense optimizer state",
                f"{expected} float32 values ({len(self.rule.state_names)} state(s) x "
                f"{expected // max(len(self.rule.state_names), 1)} dense weights)",
                f"{arr.size} values",
            )
        pos = 0
        with torch.no_grad():
            for t in tensors:
                n = t.numel()
                t.copy_(torch.from_numpy(arr[pos:pos + n].copy()).view_as(t))
                pos += n

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["hugectr_t"] = self.t
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.t = int(state_dict.pop("hugectr_t", 0))
        super().load_state_dict(state_dict)


def _register(name: str) -> type[HugeCTRDenseOptimizer]:
    cls = type(name, (HugeCTRDenseOptimizer,), {
        "optimizer_type": name,
        "__doc__": f"HugeCTR dense {name} (rule in terarec.optim.rules; see module docstring).",
        "__module__": __name__,
    })
    DENSE_OPTIMIZERS.add(name, cls)
    return cls


SGD = _register("SGD")
MomentumSGD = _register("MomentumSGD")
Nesterov = _register("Nesterov")
Adam = _register("Adam")
AdaGrad = _register("AdaGrad")
Ftrl = _register("Ftrl")
RMSProp = _register("RMSProp")


def make_dense_optimizer(
    cfg: OptimizerConfig,
    params: Iterable[torch.Tensor] | Iterable[dict],
    scaler: float = 1.0,
    lr: float = 0.001,
) -> HugeCTRDenseOptimizer:
    """Build the dense optimizer named by ``cfg.type`` (registry lookup, no if/elif)."""
    cls = DENSE_OPTIMIZERS.get(cfg.type, "optimizer_type")
    return cls(params, cfg, lr=lr, scaler=scaler)

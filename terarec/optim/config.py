"""``OptimizerConfig``: the optimizer type and hyper-parameters (HugeCTR ``CreateOptimizer``).

The learning rate is not part of it: it always comes from the solver / scheduler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from terarec.errors import ConfigError

OPTIMIZER_TYPES = ("SGD", "MomentumSGD", "Nesterov", "Adam", "AdaGrad", "Ftrl", "RMSProp")
UPDATE_TYPES = ("Global", "Local", "LazyGlobal")

# Number of state values per weight (used by HugeCTR's workspace -> vocabulary formula).
STATES_PER_WEIGHT = {
    "SGD": 0, "MomentumSGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "Adam": 2, "Ftrl": 2,
}


@dataclass
class OptimizerConfig:
    """Optimizer type, update type and every hyper-parameter of ``CreateOptimizer``."""

    type: str = "Adam"
    update_type: str = "Global"
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-7
    initial_accu_value: float = 0.0
    momentum_factor: float = 0.0
    atomic_update: bool = True
    beta: float = 0.0
    lambda1: float = 0.0
    lambda2: float = 0.0

    def __post_init__(self) -> None:
        if self.type not in OPTIMIZER_TYPES:
            raise ConfigError("optimizer_type", f"one of {list(OPTIMIZER_TYPES)}", self.type)
        if self.update_type not in UPDATE_TYPES:
            raise ConfigError("update_type", f"one of {list(UPDATE_TYPES)}", self.update_type)
        for name in ("beta1", "beta2", "epsilon", "initial_accu_value", "momentum_factor",
                     "beta", "lambda1", "lambda2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"CreateOptimizer({name}=...)", "a number", value)
            setattr(self, name, float(value))
        if not isinstance(self.atomic_update, bool):
            raise ConfigError("CreateOptimizer(atomic_update=...)", "a bool", self.atomic_update)

    @property
    def states_per_weight(self) -> int:
        extra = 1 if (self.type == "Adam" and self.update_type == "LazyGlobal") else 0
        return STATES_PER_WEIGHT[self.type] + extra

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

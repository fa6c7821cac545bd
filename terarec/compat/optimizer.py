"""``hugectr.CreateOptimizer(...)`` -> ``OptParamsPy`` (wraps terarec's ``OptimizerConfig``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from terarec.compat._check import check_bool, check_float
from terarec.enums import Optimizer_t, Update_t, coerce, name_of
from terarec.errors import ConfigError
from terarec.optim.config import OptimizerConfig


@dataclass
class OptParamsPy:
    """HugeCTR's optimizer-parameters object; ``config`` is the typed terarec form."""

    config: OptimizerConfig | None = None

    @property
    def initialized(self) -> bool:
        return self.config is not None

    @property
    def optimizer(self) -> Any:
        return getattr(Optimizer_t, self.config.type) if self.config else None

    @property
    def update_type(self) -> Any:
        return getattr(Update_t, self.config.update_type) if self.config else None


def CreateOptimizer(  # noqa: N802 - HugeCTR's name
    optimizer_type: Any = Optimizer_t.Adam,
    update_type: Any = Update_t.Global,
    beta: float = 0.0,
    lambda1: float = 0.0,
    lambda2: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-7,
    initial_accu_value: float = 0.0,
    momentum_factor: float = 0.0,
    atomic_update: bool = True,
) -> OptParamsPy:
    """Create optimizer parameters (HugeCTR §5.1). The learning rate comes from the solver."""
    f = "CreateOptimizer"
    opt = coerce(Optimizer_t, optimizer_type, f"{f}(optimizer_type=...)")
    upd = coerce(Update_t, update_type, f"{f}(update_type=...)")
    try:
        cfg = OptimizerConfig(
            type=name_of(opt),
            update_type=name_of(upd),
            beta=check_float(f, "beta", beta),
            lambda1=check_float(f, "lambda1", lambda1),
            lambda2=check_float(f, "lambda2", lambda2),
            beta1=check_float(f, "beta1", beta1),
            beta2=check_float(f, "beta2", beta2),
            epsilon=check_float(f, "epsilon", epsilon),
            initial_accu_value=check_float(f, "initial_accu_value", initial_accu_value),
            momentum_factor=check_float(f, "momentum_factor", momentum_factor),
            atomic_update=check_bool(f, "atomic_update", atomic_update),
        )
    except ConfigError:
        raise
    return OptParamsPy(cfg)

"""``hugectr.optimizer.CreateOptimizer`` of HugeCTR 2.3-3.0 (learning rate inside the optimizer).

The schedule arguments build the model's learning-rate scheduler when a ``Session`` or legacy
``Model`` uses this object; the optimizer itself is the same as ``terarec.CreateOptimizer``.
"""

from __future__ import annotations

from typing import Any

from terarec.compat.optimizer import CreateOptimizer as _create
from terarec.compat.optimizer import OptParamsPy
from terarec.enums import Optimizer_t, Update_t


class LegacyOptParams(OptParamsPy):
    """``OptParamsPy`` that also carries the 2.3-era learning-rate settings."""

    schedule: dict[str, Any]


def CreateOptimizer(  # noqa: N802 - HugeCTR's name
    optimizer_type: Any = Optimizer_t.Adam, update_type: Any = Update_t.Global,
    learning_rate: float = 0.001, warmup_steps: int = 1, decay_start: int = 0,
    decay_steps: int = 1, decay_power: float = 2.0, end_lr: float = 0.0,
    beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7,
    initial_accu_value: float = 0.0, momentum_factor: float = 0.0, atomic_update: bool = True,
    use_mixed_precision: bool = False,
) -> LegacyOptParams:
    base = _create(optimizer_type, update_type, beta1=beta1, beta2=beta2, epsilon=epsilon,
                   initial_accu_value=initial_accu_value, momentum_factor=momentum_factor,
                   atomic_update=atomic_update)
    out = LegacyOptParams(base.config)
    out.schedule = {"learning_rate": learning_rate, "warmup_steps": warmup_steps,
                    "decay_start": decay_start, "decay_steps": decay_steps,
                    "decay_power": decay_power, "end_lr": end_lr}
    return out

"""HugeCTR's learning-rate schedule: linear warmup, then polynomial decay to ``end_lr``."""

from __future__ import annotations

from terarec.errors import ConfigError


class LearningRateScheduler:
    """Warmup + polynomial decay exactly as HugeCTR's ``LearningRateScheduler.get_next()``.

    The step counter starts at 1 on the first ``get_next()``:

    * step <= warmup_steps: ``lr = step * base_lr / warmup_steps``
    * else if decay_start == 0: ``base_lr``
    * step <= decay_start: ``base_lr``
    * decay_start < step <= decay_start + decay_steps:
      ``max(base_lr * ((decay_start + decay_steps - step) / decay_steps) ** decay_power, end_lr)``
    * after that: ``end_lr``

    ``warmup_steps=0`` means no warmup (the MLPerf DLRM ``train.py`` default), ``decay_start=0``
    no decay; ``decay_steps=0`` with ``decay_start > 0`` drops straight to ``end_lr`` after
    ``decay_start`` (the empty decay range of the same formula). Only negative counts are errors.

    Example:
        >>> s = LearningRateScheduler(1.0, warmup_steps=2)
        >>> [s.get_next() for _ in range(3)]
        [0.5, 1.0, 1.0]
    """

    def __init__(
        self,
        base_lr: float,
        warmup_steps: int = 1,
        decay_start: int = 0,
        decay_steps: int = 1,
        decay_power: float = 2.0,
        end_lr: float = 0.0,
    ) -> None:
        if base_lr < 0:
            raise ConfigError("lr", "a non-negative learning rate", base_lr)
        if warmup_steps < 0:
            raise ConfigError("warmup_steps", "an integer >= 0 (0: no warmup)", warmup_steps)
        if decay_start < 0:
            raise ConfigError("decay_start", "an integer >= 0 (0: never decay)", decay_start)
        if decay_steps < 0:
            raise ConfigError("decay_steps", "an integer >= 0", decay_steps)
        if decay_power < 1:
            raise ConfigError("decay_power", "a number >= 1", decay_power)
        if end_lr < 0:
            raise ConfigError("end_lr", "a non-negative learning rate", end_lr)
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.decay_start = int(decay_start)
        self.decay_steps = int(decay_steps)
        self.decay_power = float(decay_power)
        self.end_lr = float(end_lr)
        self.step = 0

    def lr_at(self, step: int) -> float:
        """The rate of 1-based ``step`` (the formula in the class docstring)."""
        if self.warmup_steps and step <= self.warmup_steps:
            return step * self.base_lr / self.warmup_steps
        if self.decay_start == 0 or step <= self.decay_start:
            return self.base_lr
        if step <= self.decay_start + self.decay_steps:
            frac = (self.decay_start + self.decay_steps - step) / self.decay_steps
            return max(self.base_lr * frac**self.decay_power, self.end_lr)
        return self.end_lr

    def get_next(self) -> float:
        self.step += 1
        return self.lr_at(self.step)

    def get_lr(self) -> float:
        """The rate of the most recent step (``base_lr`` scaled for step 1 before any step)."""
        return self.lr_at(max(self.step, 1))

    def state_dict(self) -> dict[str, float | int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.step = int(state["step"])

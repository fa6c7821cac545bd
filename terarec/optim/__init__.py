"""Optimizers: configuration, HugeCTR's dense update rules, and the learning-rate schedule."""

from terarec.optim.config import OptimizerConfig
from terarec.optim.schedule import LearningRateScheduler

__all__ = ["LearningRateScheduler", "OptimizerConfig"]

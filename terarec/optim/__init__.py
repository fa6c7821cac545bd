"""Optimizers: configuration, HugeCTR's update rules, dense optimizers and the LR schedule."""

from terarec.optim.config import OptimizerConfig
from terarec.optim.dense import HugeCTRDenseOptimizer, make_dense_optimizer
from terarec.optim.rules import UPDATE_RULES, get_rule
from terarec.optim.schedule import LearningRateScheduler

__all__ = [
    "UPDATE_RULES", "HugeCTRDenseOptimizer", "LearningRateScheduler", "OptimizerConfig",
    "get_rule", "make_dense_optimizer",
]

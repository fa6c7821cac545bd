"""Per-row optimizer state of one embedding table and the three HugeCTR update types.

Owns the state tensors (``[rows, dim]`` per state, in the rule's file order), the table's step
counter ``t``, the LazyGlobal per-row last-step counter, and how an update of the rows hit in a
step is applied (``Update_t``, registry :data:`UPDATE_MODES`):

* ``Local``: only rows hit this step take the step.
* ``Global``: every used row takes the step, non-hit rows with a zero gradient (Adam moments
  decay and weights move by them). For rules whose zero-gradient step is a no-op (SGD,
  AdaGrad, Ftrl) this is exactly Local and costs nothing extra.
* ``LazyGlobal``: only hit rows are touched, but they first catch up the steps they skipped,
  using the per-row last-step counter (exact for MomentumSGD/Nesterov/RMSProp; HugeCTR's
  approximation for Adam, see :func:`terarec.optim.rules._adam_lazy`). As in HugeCTR the
  catch-up happens in the backward of the next hit, so that step's forward reads the row as
  it was at its previous update; with a loss linear in the rows Lazy ends exactly where
  Global does for MomentumSGD / Nesterov / RMSProp.

The formulas themselves live in :mod:`terarec.optim.rules`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from terarec.optim.config import OptimizerConfig
from terarec.optim.rules import UpdateRule, get_rule
from terarec.utils.registry import Registry

ModeFn = Callable[["SparseOptimizer", torch.Tensor, torch.Tensor, torch.Tensor, int], None]
UPDATE_MODES: Registry[ModeFn] = Registry("update type")


class SparseOptimizer:
    """Optimizer state of one table's rows.

    Args:
        config: optimizer type, update type and hyper-parameters.
        dim: embedding vector size.
        rows: initial number of allocated rows (grown with :meth:`grow`).
        device: where the states live.
    """

    def __init__(self, config: OptimizerConfig, dim: int, rows: int,
                 device: torch.device) -> None:
        self.config = config
        self.rule: UpdateRule = get_rule(config.type)
        self.mode: ModeFn = UPDATE_MODES.get(config.update_type, "update_type")
        self.dim = dim
        self.lr = 0.0
        self.scaler = 1.0
        self.t = 0
        self.lazy = config.update_type == "LazyGlobal"
        self._init = self.rule.initial_values(config)
        self.states = [torch.full((rows, dim), v, device=device) for v in self._init]
        self.last_step = torch.zeros(rows if self.lazy else 0, dtype=torch.int64, device=device)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.rule.state_names

    def grow(self, rows: int) -> None:
        """Extend every state to ``rows`` rows (new rows take the initial values)."""
        for i, (s, v) in enumerate(zip(self.states, self._init)):
            extra = torch.full((rows - s.shape[0], self.dim), v, dtype=s.dtype, device=s.device)
            self.states[i] = torch.cat([s, extra])
        if self.lazy:
            extra = torch.zeros(rows - self.last_step.numel(), dtype=torch.int64,
                                device=self.last_step.device)
            self.last_step = torch.cat([self.last_step, extra])

    def apply_fn(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.states = [fn(s) for s in self.states]
        self.last_step = fn(self.last_step)

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Give ``rows`` the state of a fresh row (a reused row of an evicting table)."""
        for s, v in zip(self.states, self._init):
            s[rows] = v
        if self.lazy:
            self.last_step[rows] = 0

    def reset(self) -> None:
        """Back to the state of a fresh optimizer (weights are not touched)."""
        for s, v in zip(self.states, self._init):
            s.fill_(v)
        self.last_step.zero_()
        self.t = 0

    def update(self, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
               extent: int) -> None:
        """One optimizer step: ``rows`` are unique, ``grad`` their summed gradient (unscaled).

        ``extent``: rows ``[0, extent)`` hold every used row (visited by Global updates).
        """
        self.t += 1
        if self.scaler != 1.0:
            grad = grad / self.scaler
        self.mode(self, weight, rows, grad, extent)

    # gather / scatter of hit rows
    # index_select / index_copy_ rather than weight[rows] / weight[rows] = w: the same copies,
    # ~3x faster on CPU (advanced indexing takes a generic strided path there).
    def _gather(self, weight: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, list]:
        return weight.index_select(0, rows), [s.index_select(0, rows) for s in self.states]

    def _scatter(self, weight: torch.Tensor, rows: torch.Tensor, w: torch.Tensor,
                 st: list[torch.Tensor]) -> None:
        weight.index_copy_(0, rows, w.to(weight.dtype))
        for s, v in zip(self.states, st):
            s.index_copy_(0, rows, v.to(s.dtype))


@UPDATE_MODES.register("Local")
def _local(opt: SparseOptimizer, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
           extent: int) -> None:
    w, st = opt._gather(weight, rows)
    opt.rule.step([w], [[s] for s in st], [grad], opt.lr, opt.config, opt.t)
    opt._scatter(weight, rows, w, st)


@UPDATE_MODES.register("Global")
def _global(opt: SparseOptimizer, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
            extent: int) -> None:
    if not opt.rule.zero_step_changes:
        _local(opt, weight, rows, grad, extent)
        return
    w, st = opt._gather(weight, rows)  # copies taken before the zero-gradient sweep
    opt.rule.step([weight[:extent]], [[s[:extent]] for s in opt.states], None, opt.lr,
                  opt.config, opt.t)
    opt.rule.step([w], [[s] for s in st], [grad], opt.lr, opt.config, opt.t)
    opt._scatter(weight, rows, w, st)


@UPDATE_MODES.register("LazyGlobal")
def _lazy_global(opt: SparseOptimizer, weight: torch.Tensor, rows: torch.Tensor,
                 grad: torch.Tensor, extent: int) -> None:
    w, st = opt._gather(weight, rows)
    opt.rule.lazy(w, st, grad, opt.last_step[rows], opt.lr, opt.config, opt.t)
    opt.last_step[rows] = opt.t
    opt._scatter(weight, rows, w, st)

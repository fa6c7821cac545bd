"""``apply_optimizer_in_backward``: TorchRec's way to pick an embedding table's optimizer.

Owns the translation of a ``torch.optim`` class and its keyword arguments into terarec's fused
sparse optimizer (:class:`~terarec.optim.config.OptimizerConfig`), and installing it on the
tables behind the given parameters. The update then runs inside the backward of the lookup
(terarec's fused tables, like TorchRec's fused FBGEMM tables); the table weights never get a
``.grad`` and a dense ``torch.optim`` optimizer built over ``model.parameters()`` skips them.

Mapping (every other argument must keep its default, else :class:`NotSupportedError`):

* ``torch.optim.SGD(lr, momentum=0)`` -> ``SGD``; ``momentum > 0`` (``dampening=0``) ->
  ``MomentumSGD``, ``nesterov=True`` -> ``Nesterov`` (``Global`` update: every row takes the
  momentum step, as ``torch.optim.SGD`` on the whole weight does; equal for a constant lr).
* ``torch.optim.Adagrad(lr, eps, initial_accumulator_value)`` -> ``AdaGrad``: per element
  ``s += g^2; w -= lr * g / (sqrt(s) + eps)``, as ``torch.optim.Adagrad`` and TorchRec's
  ``EXACT_ADAGRAD`` (not the row-wise variant).
* ``torch.optim.Adam(lr, betas, eps)`` -> ``Adam`` with the ``Global`` update (every row steps,
  as ``torch.optim.Adam`` on the whole weight). HugeCTR's formula adds ``eps`` before the bias
  correction (``w -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)``), torch after it;
  :class:`TorchAdamSparseOptimizer` passes HugeCTR's rule ``eps * sqrt(1 - b2^t)`` at step
  ``t``, which is torch's update exactly.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from terarec.embedding.sparse_optimizer import SparseOptimizer
from terarec.embedding.table import EmbeddingTable
from terarec.errors import ConfigError, NotSupportedError
from terarec.optim.config import OptimizerConfig

SUPPORTED = ("torch.optim.SGD", "torch.optim.Adagrad", "torch.optim.Adam")


def _bound_kwargs(optimizer_class: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` over the class's defaults; unknown names are an error listing the known."""
    sig = inspect.signature(optimizer_class.__init__)
    defaults = {n: p.default for n, p in sig.parameters.items()
                if n not in ("self", "params") and p.default is not p.empty}
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ConfigError(f"apply_optimizer_in_backward({optimizer_class.__name__}) "
                          "optimizer_kwargs", f"names among {sorted(defaults)}", unknown)
    out = {**defaults, **kwargs}
    lr = out.get("lr")
    if isinstance(lr, torch.Tensor):
        out["lr"] = float(lr)
    if isinstance(out.get("lr"), bool) or not isinstance(out.get("lr"), (int, float)) \
            or not out["lr"] >= 0:
        raise ConfigError(f"apply_optimizer_in_backward({optimizer_class.__name__}) lr",
                          "a non-negative number", lr)
    return out


def _require_default(name: str, args: dict[str, Any], key: str, default: Any) -> None:
    if args[key] != default:
        raise NotSupportedError(f"apply_optimizer_in_backward({name}): {key}={args[key]!r} is "
                                f"not supported by terarec's fused sparse optimizers (keep "
                                f"{key}={default!r})")


def sparse_optimizer_config(optimizer_class: type,
                            optimizer_kwargs: dict[str, Any] | None = None
                            ) -> tuple[OptimizerConfig, float]:
    """terarec's ``(OptimizerConfig, lr)`` for ``optimizer_class(**optimizer_kwargs)`` (see
    the module docstring); :class:`NotSupportedError` for other classes or arguments."""
    kwargs = dict(optimizer_kwargs or {})
    if optimizer_class not in (torch.optim.SGD, torch.optim.Adagrad, torch.optim.Adam):
        name = getattr(optimizer_class, "__qualname__", repr(optimizer_class))
        raise NotSupportedError(f"apply_optimizer_in_backward: optimizer class {name} has no "
                                f"terarec fused sparse optimizer; supported: {list(SUPPORTED)}")
    name = optimizer_class.__name__
    args = _bound_kwargs(optimizer_class, kwargs)
    _require_default(name, args, "weight_decay", 0)
    if "maximize" in args:
        _require_default(name, args, "maximize", False)
    if optimizer_class is torch.optim.SGD:
        mu = float(args["momentum"])
        if mu == 0:
            _require_default(name, args, "nesterov", False)
            return OptimizerConfig(type="SGD", update_type="Local"), float(args["lr"])
        _require_default(name, args, "dampening", 0)
        kind = "Nesterov" if args["nesterov"] else "MomentumSGD"
        return OptimizerConfig(type=kind, update_type="Global", momentum_factor=mu), \
            float(args["lr"])
    if optimizer_class is torch.optim.Adagrad:
        _require_default(name, args, "lr_decay", 0)
        return OptimizerConfig(type="AdaGrad", update_type="Local", epsilon=float(args["eps"]),
                               initial_accu_value=float(args["initial_accumulator_value"])), \
            float(args["lr"])
    _require_default(name, args, "amsgrad", False)
    beta1, beta2 = (float(b) for b in args["betas"])
    return OptimizerConfig(type="Adam", update_type="Global", beta1=beta1, beta2=beta2,
                           epsilon=float(args["eps"])), float(args["lr"])


class TorchAdamSparseOptimizer(SparseOptimizer):
    """terarec's Adam with ``torch.optim.Adam``'s epsilon: at step ``t`` the rule gets
    ``eps * sqrt(1 - beta2^t)`` (its eps sits before the bias correction, torch's after)."""

    def __init__(self, config: OptimizerConfig, dim: int, rows: int,
                 device: torch.device) -> None:
        super().__init__(dataclasses.replace(config), dim, rows, device)
        self.torch_eps = config.epsilon

    def update(self, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
               extent: int) -> None:
        t = self.t + 1  # the step this update takes
        self.config.epsilon = self.torch_eps * math.sqrt(1.0 - self.config.beta2**t)
        super().update(weight, rows, grad, extent)


def make_sparse_optimizer(config: OptimizerConfig, dim: int, rows: int,
                          device: torch.device) -> SparseOptimizer:
    """The fused optimizer state of one table for ``config`` (torch's epsilon for Adam)."""
    cls = TorchAdamSparseOptimizer if config.type == "Adam" else SparseOptimizer
    return cls(config, dim, rows, device)


def set_table_optimizer(table: EmbeddingTable, config: OptimizerConfig, lr: float) -> None:
    """Give one terarec table a fresh fused optimizer and learning rate, and let its backward
    update it (tables of an ``EmbeddingBagCollection`` start frozen)."""
    table.config.optimizer = config
    table.optimizer = make_sparse_optimizer(config, table.config.dim, table.weight.shape[0],
                                            table.device)
    table.set_learning_rate(lr)
    table.unfreeze()


def apply_optimizer_in_backward(optimizer_class: type, params: Iterable[torch.nn.Parameter],
                                optimizer_kwargs: dict[str, Any] | None = None) -> None:
    """Train the tables behind ``params`` with ``optimizer_class(**optimizer_kwargs)`` fused in
    the backward (TorchRec's ``torchrec.optim.apply_optimizer_in_backward``).

    ``params``: table weights of :class:`~terarec.torchrec.EmbeddingBagCollection` (e.g.
    ``ebc.parameters()`` or ``ebc.embedding_bags["t"].weight``) or of
    :class:`~terarec.torchrec.EmbeddingCollection` (``ec.embeddings["t"].weight``); anything
    else is an error.
    Calling it again for a table replaces its optimizer (fresh state).
    """
    params = list(params)
    config, lr = sparse_optimizer_config(optimizer_class, optimizer_kwargs)
    tables = []
    for i, p in enumerate(params):
        owner = getattr(p, "_terarec_bag", None)
        if owner is None:
            shape = tuple(p.shape) if torch.is_tensor(p) else type(p).__name__
            raise NotSupportedError(
                f"apply_optimizer_in_backward: params[{i}] (shape {shape}) is not an "
                f"EmbeddingBagCollection table weight (nor an EmbeddingCollection one); terarec "
                f"fuses optimizers into embedding "
                f"tables only (give dense parameters to a torch.optim optimizer)")
        if all(owner is not t for t in tables):
            tables.append(owner)
    for owner in tables:
        owner.set_optimizer(optimizer_class, dict(optimizer_kwargs or {}), config, lr)


def in_backward_optimizer_filter(named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                                 include: bool = False
                                 ) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """The parameters without (``include=False``) or with an optimizer applied in backward
    (TorchRec's ``in_backward_optimizer_filter``)."""
    for name, p in named_parameters:
        if hasattr(p, "_in_backward_optimizers") == include:
            yield name, p

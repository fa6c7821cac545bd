"""What ``EmbeddingBagCollection`` and ``EmbeddingCollection`` share: one TorchRec table on a
terarec :class:`~terarec.embedding.table.EmbeddingTable`.

Owns :class:`TableModule` (a direct-index table initialised with TorchRec's ``Uniform(min, max)``,
its ``weight`` parameter sharing the table rows, and the fused optimizer that
:func:`~terarec.torchrec.apply_optimizer_in_backward` installs), the checks of a collection's
table list (:func:`check_tables`) and the ``fused_optimizer`` view of a collection's tables
(:func:`fused_optimizer_of`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from terarec.embedding.table import EmbeddingTable
from terarec.errors import ConfigError
from terarec.optim.config import OptimizerConfig
from terarec.torchrec.fused_optim import FusedEntry, FusedOptimizer
from terarec.torchrec.optim import set_table_optimizer


class TableModule(nn.Module):
    """One table of a collection.

    Attributes:
        config: its TorchRec config (``EmbeddingBagConfig`` / ``EmbeddingConfig``).
        table: the terarec :class:`EmbeddingTable` holding rows and optimizer state.
        weight: ``[num_embeddings, embedding_dim]`` parameter sharing the table's rows
            (``requires_grad=False``; trained only by the fused optimizer).
    """

    def __init__(self, config: Any, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        self.table = EmbeddingTable(config.to_table_config(), device, index="direct")
        lo, hi = config.init_bounds()
        n = config.num_embeddings
        init = torch.empty(n, config.embedding_dim, device=self.table.device).uniform_(lo, hi)
        self.table.load(torch.arange(n, device=self.table.device), init)
        self.table.freeze()  # trained only once apply_optimizer_in_backward gives an optimizer
        self.optimizer_spec: tuple[type, dict[str, Any]] | None = None
        self._link()

    def _link(self) -> None:
        """(Re)bind ``weight`` to the table's rows (after construction and device moves)."""
        old = self._parameters.get("weight")
        w = nn.Parameter(self.table.weight, requires_grad=False)
        w._terarec_bag = self  # type: ignore[attr-defined]
        if old is not None and hasattr(old, "_in_backward_optimizers"):
            for attr in ("_in_backward_optimizers", "_optimizer_classes", "_optimizer_kwargs"):
                setattr(w, attr, getattr(old, attr))
        self.weight = w

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):  # noqa: ANN202
        super()._apply(fn, recurse)
        self._link()
        return self

    def set_optimizer(self, optimizer_class: type, kwargs: dict[str, Any],
                      config: OptimizerConfig, lr: float) -> None:
        """Install the fused optimizer (called by ``apply_optimizer_in_backward``)."""
        set_table_optimizer(self.table, config, lr)
        self.optimizer_spec = (optimizer_class, kwargs)
        self.weight._in_backward_optimizers = [config]  # type: ignore[attr-defined]
        self.weight._optimizer_classes = [optimizer_class]  # type: ignore[attr-defined]
        self.weight._optimizer_kwargs = [kwargs]  # type: ignore[attr-defined]


def check_tables(tables: Any, config_class: type, owner: str) -> list:
    """``tables`` as a list, checked: non-empty, all ``config_class``, unique names, every
    feature read by one table only (:class:`ConfigError` naming ``owner`` otherwise)."""
    tables = list(tables)
    if not tables or any(not isinstance(t, config_class) for t in tables):
        raise ConfigError(f"{owner} tables", f"a non-empty list of {config_class.__name__}",
                          tables)
    names = [t.name for t in tables]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{owner} tables", "unique table names", dup)
    seen: dict[str, str] = {}
    for t in tables:
        for f in t.feature_names:
            if f in seen:
                raise ConfigError(f"{owner} table {t.name!r} feature_names",
                                  f"features not read by another table ({f!r} is read by "
                                  f"table {seen[f]!r})", t.feature_names)
            seen[f] = t.name
    return tables


def fused_optimizer_of(modules: list[TableModule], prefix: str,
                       cache: tuple[tuple[int, ...], FusedOptimizer] | None
                       ) -> tuple[tuple[int, ...], FusedOptimizer]:
    """``(signature, FusedOptimizer)`` of the ``modules`` given an optimizer, keyed
    ``<prefix>.<table>.weight``; ``cache`` is returned as is while the tables' optimizers stay
    the same (so ``param_groups`` edits persist)."""
    sig = tuple(id(m.table.optimizer) for m in modules if m.optimizer_spec is not None)
    if cache is not None and cache[0] == sig:
        return cache
    entries = [FusedEntry(f"{prefix}.{m.config.name}.weight", m.config.name,
                          [(m.config.name, m.table)], m.config.num_embeddings,
                          m.table.optimizer.lr, m.table.config.optimizer.type)
               for m in modules if m.optimizer_spec is not None]
    return sig, FusedOptimizer(entries)

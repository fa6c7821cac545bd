"""TorchRec's ``EmbeddingBagCollection`` on terarec's fused-update tables.

Owns the module users build (:class:`EmbeddingBagCollection`), one
:class:`EmbeddingBagTable` per :class:`EmbeddingBagConfig` (``ebc.embedding_bags[name]``) and
the KJT -> pooled ``KeyedTensor`` forward. Each table is a terarec
:class:`~terarec.embedding.table.EmbeddingTable` with a direct index (id = row, every row
allocated and initialised at construction with TorchRec's ``Uniform(min, max)``) and reads all
its features in one lookup (one slot per feature), so one backward applies one fused optimizer
step per table, as a TorchRec fused table does.

Parameters: ``embedding_bags[name].weight`` is an ``nn.Parameter`` with ``requires_grad=False``
that shares storage with the table rows. It is in ``state_dict()`` /  ``load_state_dict()``
(``embedding_bags.<name>.weight``) and in ``ebc.parameters()`` (pass those to
:func:`~terarec.torchrec.apply_optimizer_in_backward`); it never gets a ``.grad``, so a dense
``torch.optim`` optimizer over ``model.parameters()`` leaves it alone. Tables are trained only
by the fused optimizer; until one is applied the backward does not touch them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from terarec.embedding.table import pool
from terarec.errors import ConfigError, NotSupportedError
from terarec.sparse import SparseInput
from terarec.torchrec.config import EmbeddingBagConfig, PoolingType
from terarec.torchrec.fused_optim import FusedOptimizer
from terarec.torchrec.fused_params import apply_fused_params
from terarec.torchrec.jagged import KeyedJaggedTensor
from terarec.torchrec.keyed import KeyedTensor
from terarec.torchrec.layout import table_input
from terarec.torchrec.table_module import TableModule, check_tables, fused_optimizer_of


class _WeightedLookup(torch.autograd.Function):
    """forward: weighted-sum pooling; backward: the table's fused update of the looked-up rows
    (per-id weights scale each id's gradient; the weights themselves get none)."""

    @staticmethod
    def forward(ctx, anchor, table, rows, offsets, weights):  # noqa: ANN001, ANN205
        ctx.table = table
        ctx.save_for_backward(rows, offsets, weights)
        return pool(table.weight, rows, offsets, "sum", weights)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        rows, offsets, weights = ctx.saved_tensors
        ctx.table.apply_gradient(rows, offsets, grad_out, weights)
        return None, None, None, None, None


class EmbeddingBagTable(TableModule):
    """One table of an :class:`EmbeddingBagCollection` (``ebc.embedding_bags[name]``).

    Attributes:
        config: its :class:`EmbeddingBagConfig`.
        table: the terarec :class:`EmbeddingTable` holding rows and optimizer state.
        weight: ``[num_embeddings, embedding_dim]`` parameter sharing the table's rows.
    """

    def __init__(self, config: EmbeddingBagConfig, device: torch.device | str | None = None
                 ) -> None:
        super().__init__(config, device)

    def forward(self, sparse: SparseInput, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled ``[B, num_features, dim]`` of sample-major ``sparse`` (one slot per feature);
        ``weights``: per-id weights of a weighted sum."""
        if weights is None:
            return self.table(sparse)
        t = self.table
        offsets = sparse.offsets.to(device=t.device, dtype=torch.int64)
        rows = t.insert_keys(sparse.keys, offsets=offsets)
        w = weights.to(device=t.device, dtype=t.weight.dtype)
        if t.frozen or not torch.is_grad_enabled():
            out = pool(t.weight, rows, offsets, "sum", w)
        else:
            anchor = torch.empty(0, device=t.device, requires_grad=True)
            out = _WeightedLookup.apply(anchor, t, rows, offsets, w)
        return out.view(sparse.batch_size, sparse.slot_num, self.config.embedding_dim)

    def extra_repr(self) -> str:
        c = self.config
        return (f"name={c.name!r}, num_embeddings={c.num_embeddings}, dim={c.embedding_dim}, "
                f"pooling={c.pooling.name}, features={c.feature_names}")


Lookup = Callable[[dict[str, SparseInput], dict[str, torch.Tensor | None]],
                  dict[str, torch.Tensor]]


class EmbeddingBagCollection(nn.Module):
    """Pooled embeddings of several tables: ``forward(KeyedJaggedTensor) -> KeyedTensor``.

    Args:
        tables: one :class:`EmbeddingBagConfig` per table (unique table names, and every
            feature read by one table only).
        is_weighted: pool ``sum(weight_i * row_i)`` with the KJT's per-id weights (SUM tables).
        device: where the tables live.
        fused_params: terarec extension: TorchRec's sharder ``fused_params`` (e.g.
            ``{"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": 0.05}``) applied to
            every table, as ``apply_optimizer_in_backward`` would
            (:mod:`~terarec.torchrec.fused_params`).

    ``fused_optimizer``: the tables' in-backward optimizers as TorchRec's ``KeyedOptimizer``
    (``state_dict()`` / ``load_state_dict()``, :mod:`~terarec.torchrec.fused_optim`).

    Output keys: the tables in order, each table's features in order; each feature a
    ``[B, embedding_dim]`` block of ``values()`` (TorchRec's order).

    Example:
        >>> ebc = EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "t", ["a", "b"])])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([1, 2, 3]),
        ...                                           torch.tensor([1, 1, 1, 0]))
        >>> ebc(kjt).values().shape
        torch.Size([2, 8])
    """

    def __init__(self, tables: list[EmbeddingBagConfig], is_weighted: bool = False,
                 device: torch.device | str | None = None,
                 fused_params: dict[str, Any] | None = None) -> None:
        super().__init__()
        tables = check_tables(tables, EmbeddingBagConfig, "EmbeddingBagCollection")
        if is_weighted:
            mean = [t.name for t in tables if t.pooling is not PoolingType.SUM]
            if mean:
                raise NotSupportedError(f"EmbeddingBagCollection(is_weighted=True): tables "
                                        f"{mean} pool MEAN; weighted pooling is a weighted SUM "
                                        f"only in terarec")
        self._configs = tables
        self._is_weighted = bool(is_weighted)
        self.embedding_bags = nn.ModuleDict({t.name: EmbeddingBagTable(t, device)
                                             for t in tables})
        self._embedding_names = [f for t in tables for f in t.feature_names]
        self._lengths_per_embedding = [t.embedding_dim for t in tables for _ in t.feature_names]
        self.sharded_lookup: Lookup | None = None  # set by DistributedModelParallel
        self._fused: tuple[tuple[int, ...], FusedOptimizer] | None = None
        self._staged: tuple[KeyedJaggedTensor, dict, dict] | None = None
        if fused_params is not None:
            apply_fused_params(self.parameters(), fused_params)

    @property
    def fused_optimizer(self) -> FusedOptimizer:
        """The tables trained in the backward (those given an optimizer), keyed
        ``embedding_bags.<table>.weight``, states dense ``[num_embeddings, dim]`` by id. Kept
        while the tables' optimizers stay the same (``param_groups`` edits persist)."""
        if not len(self.embedding_bags):
            raise ConfigError("EmbeddingBagCollection.fused_optimizer", "a collection that "
                              "is not sharded (use DistributedModelParallel.fused_optimizer)",
                              "sharded")
        bags = [self.embedding_bags[c.name] for c in self._configs]
        self._fused = fused_optimizer_of(bags, "embedding_bags", self._fused)
        return self._fused[1]

    def stage(self, features: KeyedJaggedTensor) -> tuple[dict[str, SparseInput],
                                                          dict[str, torch.Tensor | None]]:
        """Convert ``features`` now and keep the result for the forward of this very KJT
        (used by the train pipeline to issue a later batch's key exchange ahead)."""
        sparse, weights = self._convert(features)
        self._staged = (features, sparse, weights)
        return sparse, weights

    @property
    def staged(self) -> KeyedJaggedTensor | None:
        """The KJT staged by :meth:`stage` and not yet consumed by a forward."""
        return None if self._staged is None else self._staged[0]

    def drop_staged(self) -> None:
        self._staged = None

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return list(self._configs)

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        return next(iter(self.embedding_bags.values())).table.device

    def table_inputs(self, features: KeyedJaggedTensor
                     ) -> tuple[dict[str, SparseInput], dict[str, torch.Tensor | None]]:
        """Each table's ids (terarec's sample-major CSR, one slot per feature) and weights
        (those of :meth:`stage` when ``features`` is the staged KJT)."""
        if self._staged is not None and self._staged[0] is features:
            _, sparse, weights = self._staged
            self._staged = None
            return sparse, weights
        return self._convert(features)

    def _convert(self, features: KeyedJaggedTensor
                 ) -> tuple[dict[str, SparseInput], dict[str, torch.Tensor | None]]:
        if not isinstance(features, KeyedJaggedTensor):
            raise ConfigError("EmbeddingBagCollection.forward(features)", "a KeyedJaggedTensor",
                              type(features).__name__)
        if self._is_weighted:
            w = features.weights_or_none()
            if w is None:
                raise ConfigError("EmbeddingBagCollection(is_weighted=True).forward(features)",
                                  "a KeyedJaggedTensor with weights (one per id)", None)
            if w.requires_grad:
                raise NotSupportedError("EmbeddingBagCollection: gradients of the KJT weights "
                                        "are not computed (pass weights.detach())")
        sparse, weights = {}, {}
        for t in self._configs:
            sparse[t.name], weights[t.name] = table_input(
                features, t.feature_names, t.name, t.num_embeddings, self._is_weighted)
        return sparse, weights

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        sparse, weights = self.table_inputs(features)
        if self.sharded_lookup is not None:
            pooled = self.sharded_lookup(sparse, weights)
        else:
            pooled = {t.name: self.embedding_bags[t.name](sparse[t.name], weights[t.name])
                      for t in self._configs}
        b = features.stride()
        values = torch.cat([pooled[t.name].reshape(b, -1) for t in self._configs], dim=1)
        return KeyedTensor(self._embedding_names, self._lengths_per_embedding, values)

"""TorchRec's unpooled ``EmbeddingCollection`` on terarec's fused-update tables.

Owns the module users build (:class:`EmbeddingCollection`) and the KJT ->
``Dict[str, JaggedTensor]`` forward: one entry per feature whose ``values()`` are the rows of
its ids (``[ids of the feature, embedding_dim]``, in the KJT's order) with the feature's
lengths. Each table (``ec.embeddings[name]``, a :class:`~terarec.torchrec.table_module.
TableModule`, as ``EmbeddingBagCollection``'s) is a direct-index terarec ``EmbeddingTable``; an
unpooled lookup is a one-slot ``sum`` lookup with one id per bag, all the table's features in
one lookup, so one backward applies one fused optimizer step per table.

Parameters: ``embeddings[name].weight`` shares storage with the table rows
(``requires_grad=False``), is in ``state_dict()`` (``embeddings.<table>.weight``) and is what
:func:`~terarec.torchrec.apply_optimizer_in_backward` takes; tables are trained only by the
fused optimizer. ``DistributedModelParallel`` does not shard it (:class:`NotSupportedError`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from terarec.errors import ConfigError
from terarec.sparse import SparseInput
from terarec.torchrec.config import EmbeddingConfig
from terarec.torchrec.fused_optim import FusedOptimizer
from terarec.torchrec.fused_params import apply_fused_params
from terarec.torchrec.jagged import JaggedTensor, KeyedJaggedTensor
from terarec.torchrec.layout import table_input
from terarec.torchrec.table_module import TableModule, check_tables, fused_optimizer_of

OWNER = "EmbeddingCollection"


class EmbeddingTableModule(TableModule):
    """One table of an :class:`EmbeddingCollection` (``ec.embeddings[name]``): ``config``
    (:class:`EmbeddingConfig`), ``table`` (terarec's ``EmbeddingTable``), ``weight``."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``[n, embedding_dim]`` rows of the ``n`` ids (one id per bag)."""
        n = ids.numel()
        offsets = torch.arange(n + 1, device=ids.device, dtype=torch.int64)
        return self.table(SparseInput(ids, offsets, 1)).view(n, self.config.embedding_dim)

    def extra_repr(self) -> str:
        c = self.config
        return (f"name={c.name!r}, num_embeddings={c.num_embeddings}, dim={c.embedding_dim}, "
                f"features={c.feature_names}")


class EmbeddingCollection(nn.Module):
    """Unpooled (sequence) embeddings of several tables:
    ``forward(KeyedJaggedTensor) -> Dict[str, JaggedTensor]``.

    Args:
        tables: one :class:`EmbeddingConfig` per table (unique table names, and every feature
            read by one table only).
        device: where the tables live.
        need_indices: also return each feature's ids, as the ``weights`` of its JaggedTensor
            (TorchRec's convention).
        fused_params: terarec extension, as on ``EmbeddingBagCollection``: the sparse optimizer
            named the FBGEMM way, applied to every table.

    ``fused_optimizer``: the tables' in-backward optimizers (keys ``embeddings.<table>.weight``).

    Example:
        >>> ec = EmbeddingCollection([EmbeddingConfig(10, 4, "t", ["a", "b"])])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([1, 2, 3]),
        ...                                           torch.tensor([1, 1, 1, 0]))
        >>> ec(kjt)["a"].values().shape
        torch.Size([2, 4])
    """

    def __init__(self, tables: list[EmbeddingConfig], device: torch.device | str | None = None,
                 need_indices: bool = False, fused_params: dict[str, Any] | None = None
                 ) -> None:
        super().__init__()
        tables = check_tables(tables, EmbeddingConfig, OWNER)
        self._configs = tables
        self._need_indices = bool(need_indices)
        self.embeddings = nn.ModuleDict({t.name: EmbeddingTableModule(t, device) for t in tables})
        self._embedding_names = [f for t in tables for f in t.feature_names]
        self._fused: tuple[tuple[int, ...], FusedOptimizer] | None = None
        if fused_params is not None:
            apply_fused_params(self.parameters(), fused_params)

    @property
    def fused_optimizer(self) -> FusedOptimizer:
        """The tables trained in the backward, keyed ``embeddings.<table>.weight`` (states
        dense ``[num_embeddings, dim]`` by id), as ``EmbeddingBagCollection.fused_optimizer``."""
        mods = [self.embeddings[c.name] for c in self._configs]
        self._fused = fused_optimizer_of(mods, "embeddings", self._fused)
        return self._fused[1]

    def embedding_configs(self) -> list[EmbeddingConfig]:
        return list(self._configs)

    def embedding_names_by_table(self) -> list[list[str]]:
        return [list(t.feature_names) for t in self._configs]

    def need_indices(self) -> bool:
        return self._need_indices

    def embedding_dim(self) -> int:
        """The tables' dimension (TorchRec keeps one per collection; here: the first table's)."""
        return self._configs[0].embedding_dim

    @property
    def device(self) -> torch.device:
        return next(iter(self.embeddings.values())).table.device

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        if not isinstance(features, KeyedJaggedTensor):
            raise ConfigError("EmbeddingCollection.forward(features)", "a KeyedJaggedTensor",
                              type(features).__name__)
        out: dict[str, JaggedTensor] = {}
        for t in self._configs:
            ids = [table_input(features, [f], t.name, t.num_embeddings, owner=OWNER)[0].keys
                   for f in t.feature_names]
            mod = self.embeddings[t.name]
            rows = mod(torch.cat(ids).to(mod.table.device))
            for f, part in zip(t.feature_names, rows.split([i.numel() for i in ids])):
                jt = features[f]
                out[f] = JaggedTensor(values=part, lengths=jt.lengths(), offsets=jt.offsets(),
                                      weights=jt.values() if self._need_indices else None)
        return out

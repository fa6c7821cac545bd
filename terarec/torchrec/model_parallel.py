"""``DistributedModelParallel``: TorchRec's model-parallel wrapper on terarec's sharded tables.

Owns turning a model that holds :class:`~terarec.torchrec.EmbeddingBagCollection` modules
into a multi-rank one under ``torch.distributed`` (gloo on CPU, NCCL on CUDA):

* every ``EmbeddingBagCollection`` found in the module gets one terarec
  :class:`~terarec.distributed.ShardedEmbeddingCollection` (placements from ``plan``, a terarec
  :class:`~terarec.embedding.plan.ShardingPlan`, or terarec's planner
  :func:`~terarec.distributed.planner.propose`), loaded with the collection's current rows and
  trained by the fused optimizer ``apply_optimizer_in_backward`` chose (call it before
  wrapping, as in TorchRec); its local ``embedding_bags`` are dropped;
* the dense part is data-parallel through ``torch.nn.parallel.DistributedDataParallel``
  (gradients averaged over ranks).

Each rank passes its own slice of the global batch (equal slices: DDP averages); outputs are
that rank's samples. Training on W ranks then equals one process on the global batches.
After wrapping, ``state_dict()`` holds the dense parameters only; the tables are saved with
:func:`terarec.distributed.save_shards` (``dmp.sharded_collections()``).

``dmp.fused_optimizer`` (TorchRec's ``KeyedOptimizer`` view, :mod:`~terarec.torchrec.
fused_optim`) holds this rank's part of the fused optimizer state: per table trained in the
backward, keyed ``<module path>.embedding_bags.<table>.weight``, the states of the rows this
rank stores (``<table>.ids`` + ``<table>.momentum1`` ... ``[rows, dim]``, and ``<table>.step``):
row-wise / table-wise: its shard (nothing where it holds none), replicated: the whole table
(every rank alike), column-wise: its column block of every row, hybrid: its shard plus the hot
rows (``<table>.hot.*``). It loads back on the same rank of the same world size and plan (each
rank saves and loads its own); resharding goes through ``save_shards`` / ``load_shards``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from terarec.distributed.collection import ShardedEmbeddingCollection
from terarec.distributed.planner import PlannerConfig, propose
from terarec.embedding.plan import ShardingPlan
from terarec.embedding.table import EmbeddingTable
from terarec.errors import ConfigError, NotSupportedError
from terarec.sparse import SparseInput
from terarec.torchrec.embedding_bag import EmbeddingBagCollection
from terarec.torchrec.embedding_collection import EmbeddingCollection
from terarec.torchrec.fused_optim import FusedEntry, FusedOptimizer
from terarec.torchrec.fused_params import EmbeddingBagCollectionSharder, apply_fused_params
from terarec.torchrec.optim import make_sparse_optimizer

_CPU_PLANNER_MEMORY = 1 << 40


def _planner_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    return _CPU_PLANNER_MEMORY


def shard_collection(ebc: EmbeddingBagCollection, device: torch.device,
                     plan: ShardingPlan | None, group: dist.ProcessGroup | None
                     ) -> ShardedEmbeddingCollection:
    """Replace ``ebc``'s tables with a sharded collection holding the same rows and optimizer
    (collective: every rank calls it in the same order)."""
    if ebc.is_weighted():
        raise NotSupportedError("DistributedModelParallel: a weighted EmbeddingBagCollection "
                                "(is_weighted=True) is not shardable in terarec yet")
    bags = dict(ebc.embedding_bags.items())
    configs = [bags[c.name].table.config for c in ebc.embedding_bag_configs()]
    world = dist.get_world_size(group)
    if plan is None:
        plan = propose(configs, PlannerConfig(world_size=world,
                                              device_memory=_planner_memory(device)))
    collection = ShardedEmbeddingCollection(configs, plan, device, group=group)
    for cfg in configs:
        src = bags[cfg.name].table
        dst = collection.tables[cfg.name]
        n = cfg.max_vocabulary_size
        dst.load(torch.arange(n), src.weight[:n].detach().cpu())
        for shard in dst.modules():
            if isinstance(shard, EmbeddingTable):
                shard.optimizer = make_sparse_optimizer(cfg.optimizer, cfg.dim,
                                                        shard.weight.shape[0], shard.device)
        dst.set_learning_rate(src.optimizer.lr)
        if src.frozen:
            dst.freeze()
    ebc.embedding_bags = nn.ModuleDict()
    ebc.sharded = collection

    def lookup(sparse: dict[str, SparseInput], weights: dict[str, Any]
               ) -> dict[str, torch.Tensor]:
        return collection(sparse)

    ebc.sharded_lookup = lookup
    return collection


def _sharders_fused_params(sharders: list[Any] | None, fused_params: dict[str, Any] | None
                           ) -> dict[str, Any] | None:
    """The one ``fused_params`` of the ``sharders`` and the ``fused_params`` argument."""
    found = [] if fused_params is None else [fused_params]
    for i, s in enumerate(sharders or []):
        if not isinstance(s, EmbeddingBagCollectionSharder):
            raise NotSupportedError(f"DistributedModelParallel(sharders[{i}]): "
                                    f"{type(s).__name__} is not supported; terarec takes "
                                    f"EmbeddingBagCollectionSharder(fused_params=...) only")
        if s.fused_params is not None:
            found.append(s.fused_params)
    if any(f != found[0] for f in found[1:]):
        raise ConfigError("DistributedModelParallel fused_params", "one fused_params (the "
                          "argument and the sharders' agree)", found)
    return found[0] if found else None


def _fused_entry(key: str, name: str, collection: ShardedEmbeddingCollection, lr: float,
                 kind: str, group: dist.ProcessGroup | None) -> FusedEntry:
    """This rank's part of table ``name`` in the fused optimizer (keyed layout)."""
    table = collection.tables[name]
    parts = [(name if sub == "shard" else f"{name}.{sub}", m)
             for sub, m in table.named_modules() if isinstance(m, EmbeddingTable)]
    meta = {"rank": dist.get_rank(group), "world_size": dist.get_world_size(group),
            "placement": table.placement.to_dict()}
    return FusedEntry(key, name, parts, None, lr, kind, meta)


class DistributedModelParallel(nn.Module):
    """TorchRec's ``DistributedModelParallel(module, device=None, plan=None)``.

    Args:
        module: the model; every :class:`EmbeddingBagCollection` in it is sharded.
        device: this rank's device (default CPU, as TorchRec's; on GPUs pass
            ``torch.device("cuda", local_rank)`` with an NCCL process group).
        plan: a terarec :class:`ShardingPlan` naming every table of every collection
            (default: terarec's planner, per collection).
        group: the process group (default: the world).
        sharders: TorchRec's sharders; only ``EmbeddingBagCollectionSharder(fused_params=...)``
            matters (its ``fused_params``, as the argument below).
        fused_params: the sparse optimizer (``{"optimizer": EmbOptimType..., "learning_rate":
            ...}``) of every table that ``apply_optimizer_in_backward`` did not give one
            (TorchRec's precedence: a per-parameter optimizer wins).

    ``dmp.module`` is the wrapped model; ``forward`` runs it through DDP; ``fused_optimizer``
    see the module docstring.
    """

    def __init__(self, module: nn.Module, device: torch.device | str | None = None,
                 plan: ShardingPlan | None = None,
                 group: dist.ProcessGroup | None = None,
                 sharders: list[EmbeddingBagCollectionSharder] | None = None,
                 fused_params: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("DistributedModelParallel", "an initialised torch.distributed "
                              "process group (torchrun, or terarec.distributed."
                              "init_process_group)", None)
        self.device = torch.device("cpu" if device is None else device)
        module.to(self.device)
        unpooled = [p or "<module>" for p, m in module.named_modules()
                    if isinstance(m, EmbeddingCollection)]
        if unpooled:
            raise NotSupportedError(f"DistributedModelParallel: EmbeddingCollection (unpooled, "
                                    f"at {unpooled}) is not sharded by terarec; shard "
                                    f"EmbeddingBagCollection only, or run the "
                                    f"EmbeddingCollection model in one process")
        named = [(p, m) for p, m in module.named_modules()
                 if isinstance(m, EmbeddingBagCollection)]
        if not named:
            raise ConfigError("DistributedModelParallel(module)", "a module holding at least "
                              "one EmbeddingBagCollection", type(module).__name__)
        fused_params = _sharders_fused_params(sharders, fused_params)
        if fused_params is not None:
            for _, e in named:
                apply_fused_params([b.weight for b in e.embedding_bags.values()
                                    if b.optimizer_spec is None], fused_params)
        trained = [{n: (b.table.optimizer.lr, b.table.config.optimizer.type)
                    for n, b in e.embedding_bags.items() if b.optimizer_spec is not None}
                   for _, e in named]
        self._collections = [shard_collection(e, self.device, plan, group) for _, e in named]
        self.fused_optimizer = FusedOptimizer([
            _fused_entry(f"{p + '.' if p else ''}embedding_bags.{name}.weight", name, coll,
                         lr, kind, group)
            for (p, _), coll, tr in zip(named, self._collections, trained)
            for name, (lr, kind) in tr.items()])
        dense = [p for p in module.parameters() if p.requires_grad]
        self._dmp_wrapped_module: nn.Module = module
        if dense:
            self._dmp_wrapped_module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device] if self.device.type == "cuda" else None,
                process_group=group)

    @property
    def module(self) -> nn.Module:
        """The wrapped model (not the DDP wrapper)."""
        m = self._dmp_wrapped_module
        return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m

    def sharded_collections(self) -> list[ShardedEmbeddingCollection]:
        return list(self._collections)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._dmp_wrapped_module(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped model's dense state (keys as in ``dmp.module``)."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True,  # type: ignore[override]
                        assign: bool = False) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

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


class DistributedModelParallel(nn.Module):
    """TorchRec's ``DistributedModelParallel(module, device=None, plan=None)``.

    Args:
        module: the model; every :class:`EmbeddingBagCollection` in it is sharded.
        device: this rank's device (default CPU, as TorchRec's; on GPUs pass
            ``torch.device("cuda", local_rank)`` with an NCCL process group).
        plan: a terarec :class:`ShardingPlan` naming every table of every collection
            (default: terarec's planner, per collection).
        group: the process group (default: the world).

    ``dmp.module`` is the wrapped model; ``forward`` runs it through DDP.
    """

    def __init__(self, module: nn.Module, device: torch.device | str | None = None,
                 plan: ShardingPlan | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("DistributedModelParallel", "an initialised torch.distributed "
                              "process group (torchrun, or terarec.distributed."
                              "init_process_group)", None)
        self.device = torch.device("cpu" if device is None else device)
        module.to(self.device)
        ebcs = [m for m in module.modules() if isinstance(m, EmbeddingBagCollection)]
        if not ebcs:
            raise ConfigError("DistributedModelParallel(module)", "a module holding at least "
                              "one EmbeddingBagCollection", type(module).__name__)
        self._collections = [shard_collection(e, self.device, plan, group) for e in ebcs]
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

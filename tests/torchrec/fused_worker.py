"""Training runs of test_fused / test_pipeline: one process (world 1) or one rank of a gloo
group under DistributedModelParallel (each rank its slice of every global batch; spawned by
tests.distributed.harness)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from terarec.distributed import load_shards, save_shards
from terarec.embedding.plan import ShardingPlan, TablePlacement
from terarec.torchrec import (
    EmbeddingBagCollection,
    EmbOptimType,
    KeyedJaggedTensor,
    TrainPipelineSparseDist,
    apply_optimizer_in_backward,
)
from terarec.torchrec.model_parallel import DistributedModelParallel
from tests.torchrec.dmp_worker import slice_kjt
from tests.torchrec.test_ebc import Model, random_kjt, tables

OPTS = {
    "adagrad": (torch.optim.Adagrad, {"lr": 0.1, "eps": 1e-8}),
    "adam": (torch.optim.Adam, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-8}),
    "momentum": (torch.optim.SGD, {"lr": 0.2, "momentum": 0.9}),
}
FUSED = {
    "adagrad": ({"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": 0.05, "eps": 1e-6},
                (torch.optim.Adagrad, {"lr": 0.05, "eps": 1e-6})),
    "adam": ({"optimizer": "adam", "learning_rate": 0.02, "beta1": 0.8, "beta2": 0.99},
             (torch.optim.Adam, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-8})),
    "sgd": ({"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.3},
            (torch.optim.SGD, {"lr": 0.3})),
}
# routed tables only: their key exchange can be issued ahead (replicated ones cannot)
ROUTED = ShardingPlan({"t0": TablePlacement("row_wise", [0, 1]),
                       "t1": TablePlacement("table_wise", [1]),
                       "t2": TablePlacement("table_wise", [0])})
MIXED = ShardingPlan({"t0": TablePlacement("row_wise", [0, 1]),
                      "t1": TablePlacement("table_wise", [1]),
                      "t2": TablePlacement("replicated", [0, 1])})
BATCH = 16


class LossModel(nn.Module):
    """TorchRec's train-pipeline convention: ``model(batch) -> (loss, output)``."""

    def __init__(self, inner: Model) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: tuple[KeyedJaggedTensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        kjt, target = batch
        pred = self.inner(kjt)
        return nn.functional.mse_loss(pred, target), pred.detach()


def batches(n: int, rank: int, world: int, seed: int = 4) -> list[tuple[KeyedJaggedTensor,
                                                                        torch.Tensor]]:
    """This rank's slices of ``n`` global batches (the same stream on every rank)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = BATCH * rank // world, BATCH * (rank + 1) // world
    out = []
    for _ in range(n):
        kjt = random_kjt(tables(), BATCH, gen)
        target = torch.randn(BATCH, generator=gen)
        out.append((slice_kjt(kjt, lo, hi) if world > 1 else kjt, target[lo:hi]))
    return out


def build(world: int, seed: int, opt: str | tuple | None = None, fused_params: dict | None = None,
          plan: ShardingPlan | None = None, ebc_fused: bool = False) -> nn.Module:
    """A ``LossModel`` (DMP-wrapped on several ranks); tables' optimizer from ``opt`` through
    ``apply_optimizer_in_backward`` or from ``fused_params`` (EBC or DMP argument)."""
    torch.manual_seed(seed)
    cfgs = tables()
    ebc = EmbeddingBagCollection(cfgs, fused_params=fused_params if ebc_fused else None)
    model = LossModel(Model(ebc, sum(c.embedding_dim * len(c.feature_names) for c in cfgs)))
    if opt is not None:
        cls, kwargs = OPTS[opt] if isinstance(opt, str) else opt
        apply_optimizer_in_backward(cls, ebc.parameters(), kwargs)
    if world > 1:
        return DistributedModelParallel(model, plan=plan,
                                        fused_params=None if ebc_fused else fused_params)
    if fused_params is not None and not ebc_fused:
        raise ValueError("one process: fused_params go to the EmbeddingBagCollection")
    return model


def fused_optimizer(model: nn.Module) -> Any:
    if isinstance(model, DistributedModelParallel):
        return model.fused_optimizer
    return model.inner.sparse.fused_optimizer


def step(model: nn.Module, dense: torch.optim.Optimizer, batch: Any, world: int) -> float:
    dense.zero_grad()
    loss, _ = model(batch)
    loss.backward()
    dense.step()
    return mean_loss(loss, world)


def mean_loss(loss: torch.Tensor, world: int) -> float:
    mean = loss.detach().reshape(1) / world
    if world > 1:
        dist.all_reduce(mean)
    return float(mean)


def table_rows(model: nn.Module) -> dict[str, np.ndarray]:
    """Every table's rows by id (collective on several ranks)."""
    out = {}
    for c in tables():
        if isinstance(model, DistributedModelParallel):
            keys, vecs, _ = model.sharded_collections()[0].tables[c.name].export()
            out[c.name] = np.asarray(vecs)[np.argsort(keys)]
        else:
            out[c.name] = model.inner.sparse.embedding_bags[c.name].weight.detach().numpy().copy()
    return out


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".mlp." in k}


def resume(rank: int, world: int, opt: str, folder: str, n: int = 3, m: int = 3,
           load_optimizer: bool = True) -> dict:
    """N+M steps straight, and N steps / save / fresh model / load / M steps."""
    data = batches(n + m, rank, world)
    straight = build(world, 0, opt, plan=MIXED)
    dense = torch.optim.SGD(straight.parameters(), lr=0.1)
    ref_losses = [step(straight, dense, b, world) for b in data]

    first = build(world, 0, opt, plan=MIXED)
    dense = torch.optim.SGD(first.parameters(), lr=0.1)
    for b in data[:n]:
        step(first, dense, b, world)
    model_sd = copy.deepcopy(first.state_dict())
    opt_sd = copy.deepcopy(fused_optimizer(first).state_dict())
    dense_sd = copy.deepcopy(dense.state_dict())
    if world > 1:
        save_shards(first.sharded_collections()[0].tables, Path(folder))
        dist.barrier()

    fresh = build(world, 7, opt, plan=MIXED)  # other initial rows and dense weights
    fresh.load_state_dict(model_sd)
    if world > 1:
        load_shards(fresh.sharded_collections()[0].tables, Path(folder), optimizer=False)
    if load_optimizer:
        fused_optimizer(fresh).load_state_dict(opt_sd)
    dense = torch.optim.SGD(fresh.parameters(), lr=0.1)
    dense.load_state_dict(dense_sd)
    losses = [step(fresh, dense, b, world) for b in data[n:]]
    return {"ref_losses": ref_losses[n:], "losses": losses, "ref_rows": table_rows(straight),
            "rows": table_rows(fresh), "ref_dense": dense_state(straight),
            "dense": dense_state(fresh),
            "state_keys": {k: sorted(v) for k, v in opt_sd["state"].items()}}


def fused_params_run(rank: int, world: int, kind: str, n: int = 4) -> dict:
    """Losses and rows of ``fused_params`` (EBC argument on one process, DMP argument on
    several) and of the ``apply_optimizer_in_backward`` equivalent."""
    out = {}
    fp = FUSED[kind][0]
    for name, model in (("fused", build(world, 0, None, fused_params=fp, plan=MIXED,
                                        ebc_fused=world == 1)),
                        ("apply", build(world, 0, FUSED[kind][1], plan=MIXED))):
        dense = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = [step(model, dense, b, world) for b in batches(n, rank, world)]
        out[name] = {"losses": losses, "rows": table_rows(model)}
    return out


def pipeline_run(rank: int, world: int, opt: str = "adam", n: int = 5) -> dict:
    """Losses of a plain loop and of TrainPipelineSparseDist over the same batches."""
    data = batches(n, rank, world)
    plain = build(world, 0, opt, plan=ROUTED)
    dense = torch.optim.SGD(plain.parameters(), lr=0.1)
    ref = [step(plain, dense, b, world) for b in data]

    model = build(world, 0, opt, plan=ROUTED)
    dense = torch.optim.SGD(model.parameters(), lr=0.1)
    pipe = TrainPipelineSparseDist(model, dense, torch.device("cpu"), overlap_input_dist=True)
    it = iter(data)
    losses, calls = [], 0
    while True:
        try:
            out = pipe.progress(it)
        except StopIteration:
            break
        calls += 1
        target = data[calls - 1][1]
        losses.append(mean_loss(nn.functional.mse_loss(out, target), world))
    return {"ref": ref, "losses": losses, "calls": calls, "issued_ahead": pipe.issued_ahead,
            "overlap_active": pipe.overlap_active, "ref_rows": table_rows(plain),
            "rows": table_rows(model)}

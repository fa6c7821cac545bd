"""The training run of test_dmp: one process, or one rank of a gloo group with its half of
each global batch under DistributedModelParallel (spawned by tests.distributed.harness)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from terarec.embedding.plan import ShardingPlan, TablePlacement
from terarec.torchrec import (
    EmbeddingBagCollection,
    JaggedTensor,
    KeyedJaggedTensor,
    apply_optimizer_in_backward,
)
from terarec.torchrec.model_parallel import DistributedModelParallel
from tests.torchrec.test_ebc import Model, random_kjt, tables

OPTS = {"sgd": (torch.optim.SGD, {"lr": 0.5}),
        "adam": (torch.optim.Adam, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-8})}
PLANS = {
    "planner": None,
    "mixed": ShardingPlan({"t0": TablePlacement("row_wise", [0, 1]),
                           "t1": TablePlacement("table_wise", [1]),
                           "t2": TablePlacement("replicated", [0, 1])}),
}
STEPS, BATCH = 5, 16


def slice_kjt(kjt: KeyedJaggedTensor, lo: int, hi: int) -> KeyedJaggedTensor:
    """Samples ``lo:hi`` of every key."""
    out = {}
    for k, jt in kjt.to_dict().items():
        rows = jt.to_dense()[lo:hi]
        out[k] = JaggedTensor.from_dense(rows) if rows else JaggedTensor(
            jt.values()[:0], lengths=jt.lengths()[:0])
    return KeyedJaggedTensor.from_jt_dict(out)


def train(rank: int, world: int, opt: str, plan: str) -> dict:
    torch.manual_seed(0)
    cfgs = tables()
    model = Model(EmbeddingBagCollection(cfgs), sum(c.embedding_dim * len(c.feature_names)
                                                    for c in cfgs))
    opt_cls, kwargs = OPTS[opt]
    apply_optimizer_in_backward(opt_cls, model.sparse.parameters(), kwargs)
    run: nn.Module = model
    if world > 1:
        run = DistributedModelParallel(model, plan=PLANS[plan])
    dense_opt = torch.optim.SGD(run.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(4)
    lo, hi = BATCH * rank // world, BATCH * (rank + 1) // world
    losses = []
    for _ in range(STEPS):
        kjt = random_kjt(cfgs, BATCH, gen)
        target = torch.randn(BATCH, generator=gen)
        dense_opt.zero_grad()
        loss = nn.functional.mse_loss(run(slice_kjt(kjt, lo, hi)), target[lo:hi])
        loss.backward()
        dense_opt.step()
        mean = loss.detach().reshape(1) / world
        if world > 1:
            dist.all_reduce(mean)
        losses.append(float(mean))
    if world > 1:
        coll = run.sharded_collections()[0]
        tabs = {c.name: coll.tables[c.name].export()[:2] for c in cfgs}
    else:
        tabs = {c.name: (torch.arange(c.num_embeddings).numpy(),
                         model.sparse.embedding_bags[c.name].weight.detach().numpy().copy())
                for c in cfgs}
    dense = {k: v.clone() for k, v in run.state_dict().items() if k.startswith("mlp.")}
    return {"losses": losses, "dense": dense, "tables": tabs}

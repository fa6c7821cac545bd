"""Tiny training scenarios run on 1 process (unsharded tables) and on N ranks (sharded).

Three tables cover one-hot/sum, multi-hot/mean (with empty slots) and multi-hot/sum with
per-slot disjoint keys (so slot-wise placement is exact); keys come from a small vocabulary so
that ranks share keys in every batch. A linear head on the pooled vectors and dense features
gives a BCE loss (mean over the rank's samples); the last global batch is uneven.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from terarec.embedding.config import TableConfig
from terarec.embedding.plan import ShardingPlan, TablePlacement
from terarec.embedding.table import EmbeddingTable
from terarec.optim.config import OptimizerConfig
from terarec.sparse import SparseInput

BATCHES = [12, 12, 12, 7]
DENSE = 2
LR = {"SGD": 0.5, "Adam": 0.05}


def configs(opt: str, update: str = "Global", onehot: bool = False) -> list[TableConfig]:
    """The three tables; ``onehot``: ``a`` and ``c`` are direct-mapped
    ``LocalizedSlotSparseEmbeddingOneHot`` tables (keys are row numbers)."""
    o = OptimizerConfig(type=opt, update_type=update)
    direct = "LocalizedSlotSparseEmbeddingOneHot"
    return [
        TableConfig("a", "in_a", dim=4, combiner="sum", slot_num=2, max_vocabulary_size=500,
                    optimizer=o, **({"embedding_type": direct, "slot_size_array": [250, 250],
                                     "hotness": 1} if onehot else {})),
        TableConfig("b", "in_b", dim=3, combiner="mean", slot_num=3, max_vocabulary_size=500,
                    optimizer=o),
        TableConfig("c", "in_c", dim=4, combiner="sum", slot_num=2,
                    max_vocabulary_size=2000 if onehot else 500,
                    slot_size_array=[1000, 1000] if onehot else None,
                    embedding_type=direct if onehot else "LocalizedSlotSparseEmbeddingHash",
                    optimizer=o),
    ]


def plan_for(kind: str, world: int) -> ShardingPlan:
    every = list(range(world))
    last = [world - 1]
    if kind == "row_wise":
        p = {n: TablePlacement("row_wise", every) for n in "abc"}
    elif kind == "table_wise":
        p = {"a": TablePlacement("table_wise", last), "b": TablePlacement("table_wise", [0]),
             "c": TablePlacement("table_wise", every)}
    elif kind == "replicated":
        p = {n: TablePlacement("replicated", every) for n in "abc"}
    elif kind == "slot_wise":  # a: slots over every rank (fixed exchange when one-hot)
        p = {"a": TablePlacement("table_wise", every), "b": TablePlacement("replicated", every),
             "c": TablePlacement("table_wise", every)}
    elif kind == "mixed":
        p = {"a": TablePlacement("row_wise", every), "b": TablePlacement("replicated", every),
             "c": TablePlacement("table_wise", last)}
    else:
        raise ValueError(kind)
    return ShardingPlan(p)


def batches(seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in BATCHES:
        a = [[[int(rng.integers(0, 20)) + 250 * s] for s in range(2)] for _ in range(n)]
        b = [[[int(k) for k in rng.integers(0, 25, size=int(rng.integers(0, 4)))]
              for _ in range(3)] for _ in range(n)]
        c = [[[int(k) + 1000 * s for k in rng.integers(0, 15, size=int(rng.integers(1, 3)))]
              for s in range(2)] for _ in range(n)]
        out.append({
            "sparse": {"in_a": SparseInput.from_lists(a), "in_b": SparseInput.from_lists(b),
                       "in_c": SparseInput.from_lists(c)},
            "dense": torch.from_numpy(rng.normal(size=(n, DENSE)).astype(np.float32)),
            "label": torch.from_numpy((rng.random((n, 1)) < 0.5).astype(np.float32)),
        })
    return out


def head(seed: int = 7) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(2 * 4 + 3 * 3 + 2 * 4 + DENSE, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
        lin.bias.zero_()
    return lin


def _slice(b: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    return {"sparse": {k: v.slice_samples(lo, hi) for k, v in b["sparse"].items()},
            "dense": b["dense"][lo:hi], "label": b["label"][lo:hi]}


def train(tables: dict[str, Any], cfgs: list[TableConfig], opt: str, dp: Any = None,
          rank: int = 0, world: int = 1, device: str = "cpu", collection: Any = None,
          tag: bool = False) -> dict[str, Any]:
    """Train on the batches; ``collection``: look every table up through its ``forward``
    (the fused path) instead of table by table; ``tag``: the sparse inputs carry every rank's
    batch size (as the data-parallel split tags them: enables fixed-size exchanges)."""
    lin = head().to(device)  # plain SGD below: torch.optim would import torch._dynamo (seconds)
    for t in tables.values():
        t.set_learning_rate(LR[opt])
    losses = []
    for b in batches():
        if dp is not None:
            n = b["label"].shape[0]
            lo, hi = n * rank // world, n * (rank + 1) // world
            dp.weight = (hi - lo) / n
            b = _slice(b, lo, hi)
            if tag:
                sizes = dp.rank_batch_sizes(n)
                b["sparse"] = {k: dataclasses.replace(v, rank_batch_sizes=sizes)
                               for k, v in b["sparse"].items()}
        b = {"sparse": {k: v.to(device) for k, v in b["sparse"].items()},
             "dense": b["dense"].to(device), "label": b["label"].to(device)}
        lin.zero_grad()
        if collection is not None:
            got = collection(b["sparse"])
            pooled = [got[c.name].flatten(1) for c in cfgs]
        else:
            pooled = [tables[c.name](b["sparse"][c.input_name]).flatten(1) for c in cfgs]
        logits = lin(torch.cat([*pooled, b["dense"]], 1))
        loss = F.binary_cross_entropy_with_logits(logits, b["label"])
        losses.append(dense_step(lin, loss, dp))
    return {"losses": losses, "dense": [p.detach().cpu().clone() for p in lin.parameters()]}


def dense_step(lin: torch.nn.Module, loss: torch.Tensor, dp: Any = None) -> float:
    """Backward of ``loss``, the data-parallel gradient all-reduce (``dp``), one SGD step of
    ``lin`` (lr 0.1); returns the (global) loss."""
    loss.backward()
    if dp is not None:
        dp.grad_sync([p.grad for p in lin.parameters()])
        loss = dp.loss_sync(loss)
    with torch.no_grad():
        for p in lin.parameters():
            p -= 0.1 * p.grad
    return float(loss.detach())


def reference(opt: str, update: str = "Global", onehot: bool = False) -> dict[str, Any]:
    """One process, unsharded tables."""
    cfgs = configs(opt, update, onehot)
    g = torch.Generator().manual_seed(123)
    tables = {c.name: EmbeddingTable(c, generator=g) for c in cfgs}
    out = train(tables, cfgs, opt)
    out["tables"] = {n: t.export()[:2] for n, t in tables.items()}
    out["opt"] = {n: t.optimizer_state() for n, t in tables.items()}
    return out


def sharded(rank: int, world: int, kind: str, opt: str, update: str = "Global",
            device: str = "cpu", fused: bool = True, onehot: bool = False,
            tag: bool = False) -> dict[str, Any]:
    from terarec.distributed import state_format
    from terarec.distributed.collection import ShardedEmbeddingCollection
    from terarec.distributed.data_parallel import DataParallel

    cfgs = configs(opt, update, onehot)
    g = torch.Generator().manual_seed(123)
    coll = ShardedEmbeddingCollection(cfgs, plan_for(kind, world), device, generator=g)
    out = train(dict(coll.tables), cfgs, opt, DataParallel(), rank, world, device,
                coll if fused else None, tag)
    out["fixed_steps"] = {n: t._exchange._steps for n, t in coll.tables.items()
                          if getattr(t, "_exchange", None) is not None}
    out["fused_kernels"] = {n: bool(getattr(getattr(t, "shard", None), "_fast_ready", False))
                            for n, t in coll.tables.items()}
    out["tables"] = {n: t.export()[:2] for n, t in coll.tables.items()}
    out["opt"] = {}
    for c in cfgs:
        t = coll.tables[c.name]
        keys = out["tables"][c.name][0]
        out["opt"][c.name] = state_format.from_bytes(c, t.optimizer_state_bytes(), keys, "test")
    return out


def sharded_many(rank: int, world: int, cases: list[tuple[str, str]], cuda: bool = False
                 ) -> dict[str, Any]:
    """Every case through the collection's (fused) forward, plus :data:`PER_TABLE` table by
    table and :data:`ONEHOT` with direct-mapped tables."""
    device = f"cuda:{rank}" if cuda else "cpu"
    out = {f"{k}/{o}": sharded(rank, world, k, o, device=device) for k, o in cases}
    out.update({f"{k}/{o}/per_table": sharded(rank, world, k, o, device=device, fused=False)
                for k, o in PER_TABLE})
    out.update({f"{k}/{o}/onehot": sharded(rank, world, k, o, device=device, onehot=True)
                for k, o in ONEHOT})
    out.update({f"{k}/{o}/fixed{'' if fused else '/per_table'}": sharded(
        rank, world, k, o, device=device, fused=fused, onehot=True, tag=True)
        for k, o, fused in FIXED})
    return out


CASES = [(k, o) for k in ("row_wise", "table_wise", "replicated", "mixed")
         for o in ("SGD", "Adam")]
#: also run table by table (each table's own collectives)
PER_TABLE = [("mixed", "Adam")]
#: also run with direct-mapped (one-hot) tables ``a`` and ``c``
ONEHOT = [("table_wise", "SGD"), ("mixed", "Adam")]
#: one-hot tables with every rank's batch size known: table ``a`` (one-hot) takes the
#: fixed-size slot exchange (whole on one rank for table_wise, slot-wise for slot_wise);
#: (kind, optimizer, through the collection's forward)
FIXED = [("table_wise", "SGD", True), ("slot_wise", "SGD", True), ("slot_wise", "Adam", True),
         ("slot_wise", "Adam", False)]


def save_shards_after(rank: int, world: int, kind: str, folder: str) -> dict[str, Any]:
    """Train on ``world`` ranks, write a sharded checkpoint, return the gathered tables."""
    from terarec.distributed.checkpoint import save_shards
    from terarec.distributed.collection import ShardedEmbeddingCollection
    from terarec.distributed.data_parallel import DataParallel

    cfgs = configs("Adam")
    coll = ShardedEmbeddingCollection(cfgs, plan_for(kind, world),
                                      generator=torch.Generator().manual_seed(123))
    train(dict(coll.tables), cfgs, "Adam", DataParallel(), rank, world)
    save_shards(dict(coll.tables), folder)
    return {n: (t.export()[:2], t.optimizer_state_bytes()) for n, t in coll.tables.items()}


def load_shards_into(rank: int, world: int, kind: str, folder: str) -> dict[str, Any]:
    """Load a sharded checkpoint under another plan / world size; return the gathered tables."""
    from terarec.distributed.checkpoint import load_shards
    from terarec.distributed.collection import ShardedEmbeddingCollection

    cfgs = configs("Adam")
    coll = ShardedEmbeddingCollection(cfgs, plan_for(kind, world),
                                      generator=torch.Generator().manual_seed(5))
    load_shards(dict(coll.tables), folder)
    return {n: (t.export()[:2], t.optimizer_state_bytes()) for n, t in coll.tables.items()}

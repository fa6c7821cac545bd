"""Column-wise and hybrid placements on the tiny scenarios of :mod:`tests.distributed.scenarios`.

Plans: ``column_wise`` (every table split by columns, one over the ranks in reverse order),
``hybrid`` (given hot keys), ``hybrid_measured`` (hot keys counted over the first two batches,
then moved into the replicas before the third), and ``mixed_cw`` (column-wise + measured hybrid
+ row-wise in one collection).
"""

from __future__ import annotations

from typing import Any

import torch

from terarec.embedding.plan import ShardingPlan, TablePlacement
from tests.distributed import scenarios as sc

HOT = {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2, 3, 4, 5], "c": [1000, 1001, 1002]}
MEASURED = {"max_hot": 4, "statistics_batches": 2}


def plan_for(kind: str, world: int) -> tuple[ShardingPlan, dict[str, dict[str, Any]]]:
    every = list(range(world))
    if kind == "column_wise":
        p = {"a": TablePlacement("column_wise", every),
             "b": TablePlacement("column_wise", every[:2]),
             "c": TablePlacement("column_wise", every[::-1])}
        return ShardingPlan(p), {}
    if kind == "hybrid":
        return (ShardingPlan({n: TablePlacement("hybrid", every) for n in "abc"}),
                {n: {"hot_keys": HOT[n]} for n in "abc"})
    if kind == "hybrid_measured":
        return (ShardingPlan({n: TablePlacement("hybrid", every) for n in "abc"}),
                {n: dict(MEASURED) for n in "abc"})
    if kind == "mixed_cw":
        p = {"a": TablePlacement("column_wise", every[::-1]),
             "b": TablePlacement("hybrid", every), "c": TablePlacement("row_wise", every)}
        return ShardingPlan(p), {"b": dict(MEASURED)}
    raise ValueError(kind)


#: (plan, optimizer, update type)
CASES = [(k, o, "Global") for k in ("column_wise", "hybrid", "hybrid_measured")
         for o in ("SGD", "Adam")] + [("column_wise", "Adam", "LazyGlobal"),
                                      ("hybrid_measured", "Adam", "LazyGlobal"),
                                      ("mixed_cw", "Adam", "Global")]


def collection(kind: str, world: int, opt: str, update: str, seed: int = 123) -> Any:
    from terarec.distributed.collection import ShardedEmbeddingCollection

    plan, options = plan_for(kind, world)
    return ShardedEmbeddingCollection(sc.configs(opt, update), plan, "cpu",
                                      generator=torch.Generator().manual_seed(seed),
                                      options=options)


def sharded(rank: int, world: int, kind: str, opt: str, update: str) -> dict[str, Any]:
    from terarec.distributed import state_format
    from terarec.distributed.data_parallel import DataParallel

    cfgs = sc.configs(opt, update)
    coll = collection(kind, world, opt, update)
    out = sc.train(dict(coll.tables), cfgs, opt, DataParallel(), rank, world, collection=coll)
    out["tables"] = {n: t.export()[:2] for n, t in coll.tables.items()}
    out["opt"] = {}
    for c in cfgs:
        keys = out["tables"][c.name][0]
        data = coll.tables[c.name].optimizer_state_bytes()
        out["opt"][c.name] = state_format.from_bytes(c, data, keys, "test")
    out["hot"] = {n: int(t.hot_keys.numel()) for n, t in coll.tables.items()
                  if hasattr(t, "hot_keys")}
    return out


def save_after(rank: int, world: int, kind: str, folder: str) -> dict[str, Any]:
    """Train (Adam) on ``world`` ranks, write a sharded checkpoint, return the gathered tables."""
    from terarec.distributed.checkpoint import save_shards
    from terarec.distributed.data_parallel import DataParallel

    coll = collection(kind, world, "Adam", "Global")
    sc.train(dict(coll.tables), sc.configs("Adam"), "Adam", DataParallel(), rank, world)
    save_shards(dict(coll.tables), folder)
    return {n: (t.export()[:2], t.optimizer_state_bytes()) for n, t in coll.tables.items()}


def load_into(rank: int, world: int, kind: str, folder: str) -> dict[str, Any]:
    """Load a sharded checkpoint under ``kind`` on ``world`` ranks; return the gathered tables."""
    from terarec.distributed.checkpoint import load_shards

    coll = collection(kind, world, "Adam", "Global", seed=5)
    load_shards(dict(coll.tables), folder)
    return {n: (t.export()[:2], t.optimizer_state_bytes()) for n, t in coll.tables.items()}


def two_ranks(rank: int, world: int, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": {c: sharded(rank, world, *c) for c in CASES}}
    out["saved"] = {k: save_after(rank, world, k, f"{tmp}/{k}")
                    for k in ("column_wise", "hybrid_measured")}
    return out


def three_ranks(rank: int, world: int, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": {c: sharded(rank, world, *c) for c in CASES}}
    # a 2-rank column-wise checkpoint into a 3-rank hybrid plan, and the reverse
    out["loaded"] = {"column_wise": load_into(rank, world, "hybrid", f"{tmp}/column_wise"),
                     "hybrid_measured": load_into(rank, world, "column_wise",
                                                  f"{tmp}/hybrid_measured")}
    return out

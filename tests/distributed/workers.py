"""What each spawned rank does in tests/distributed/test_sharded_training.py (one process
group per world size, many scenarios each, to keep process start-up cost low)."""

from __future__ import annotations

import os
from typing import Any

from tests.distributed import model_scenarios as ms
from tests.distributed import placement_scenarios as ps
from tests.distributed import scenarios as sc


def two_ranks(rank: int, world: int, data: dict[str, Any], tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {"collection": sc.sharded_many(rank, world, sc.CASES)}
    out["shards"] = sc.save_shards_after(rank, world, "mixed", f"{tmp}/shards2")
    out["model"] = {k: ms.run(rank, world, data, k, f"{tmp}/two_{k}", None)
                    for k in ("dist", "local", "onehot")}
    out["placements"] = ps.two_ranks(rank, world, f"{tmp}/placements")
    os.environ.update(TERAREC_HYBRID_MAX_HOT="8", TERAREC_HYBRID_STATISTICS_BATCHES="2")
    out["model"]["hybrid"] = ms.run(rank, world, data, "hybrid", None, None)
    return out


def three_ranks(rank: int, world: int, data: dict[str, Any], tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {"collection": sc.sharded_many(rank, world, sc.CASES)}
    out["shards"] = sc.load_shards_into(rank, world, "row_wise", f"{tmp}/shards2")
    out["model_resumed"] = ms.run(rank, world, data, "dist", None, f"{tmp}/two_dist")
    out["model"] = ms.run(rank, world, data, "local", None, None)
    out["model_onehot"] = ms.run(rank, world, data, "onehot", None, None)
    out["placements"] = ps.three_ranks(rank, world, f"{tmp}/placements")
    return out


def failing(rank: int, world: int) -> None:
    """Rank 1 raises before its first collective; rank 0 must error, not hang."""
    sc_cfgs = sc.configs("SGD")
    from terarec.distributed.collection import ShardedEmbeddingCollection

    coll = ShardedEmbeddingCollection(sc_cfgs, sc.plan_for("row_wise", world))
    if rank == 1:
        raise RuntimeError("boom on rank 1")
    b = sc.batches()[0]
    coll.tables["a"](b["sparse"]["in_a"])

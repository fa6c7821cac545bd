"""Column-wise and hybrid placements: N-rank training (gloo, CPU) equals one process.

The shared 2- and 3-rank process groups (``conftest.py``) run every case of
:data:`tests.distributed.placement_scenarios.CASES` (one-hot/sum, multi-hot/mean,
multi-hot/sum; SGD and Adam, Global and LazyGlobal; an uneven last batch); the 2-rank group
also writes column-wise and hybrid checkpoints, loaded back in one process and on 3 ranks under
the other placement, and trains a HugeCTR model with ``HybridSparseEmbedding``. Plus the column
split, the column-offset init hook, the planner and the HugeCTR mapping (no processes).
"""

from __future__ import annotations

import pytest
import torch

from terarec.distributed import planner, state_format
from terarec.distributed.checkpoint import load_shards
from terarec.distributed.column_wise import column_blocks
from terarec.embedding.config import TableConfig
from terarec.embedding.init import init_vectors
from terarec.embedding.table import EmbeddingTable
from terarec.optim.config import OptimizerConfig
from tests.distributed import model_scenarios as ms
from tests.distributed import placement_scenarios as ps
from tests.distributed import scenarios as sc
from tests.distributed.test_sharded_training import (
    assert_same_model,
    assert_same_run,
    assert_same_table,
)


@pytest.fixture(scope="module")
def refs():
    return {(o, u): sc.reference(o, u) for _, o, u in ps.CASES}


def check(results: list[dict], refs: dict, world: int) -> None:
    for case in ps.CASES:
        _, opt, update = case
        ref = refs[(opt, update)]
        for r, res in enumerate(results):
            got = res["value"]["placements"]["cases"][case]
            where = f"{world} ranks, rank {r}, {case}"
            assert_same_run(got, ref, where)
            for name in "abc":
                for state, (k, v) in ref["opt"][name].items():
                    if state == "__step__":
                        assert int(got["opt"][name][state][1][0]) == int(v[0]) == len(sc.BATCHES)
                    else:
                        assert_same_table(got["opt"][name][state], (k, v), f"{where} {state}")
            if case[0] == "hybrid_measured":  # the measured hot sets were really used
                assert got["hot"] == dict.fromkeys("abc", ps.MEASURED["max_hot"])


def test_two_ranks_equal_one_process(two, refs):
    check(two, refs, 2)


def test_three_ranks_equal_one_process(three, refs):
    check(three, refs, 3)


def test_hugectr_hybrid_embedding_runs_hybrid_on_two_ranks_and_equals_one_process(two, data):
    ref = ms.run(0, 1, data, "hybrid", None, None)
    for res in two:
        got = res["value"]["model"]["hybrid"]
        assert got["placement"] == "hybrid" and got["hot"] == 8  # measured over 2 of 6 steps
        assert_same_model(got, ref, "HybridSparseEmbedding model")


def _same_state(cfg: TableConfig, got: tuple, want: tuple, where: str) -> None:
    (gk, gv), gb = got
    (wk, wv), wb = want
    assert_same_table((gk, gv), (wk, wv), where)
    g = state_format.from_bytes(cfg, gb, gk, where)
    w = state_format.from_bytes(cfg, wb, wk, where)
    for s in state_format.state_names(cfg):
        assert_same_table(g[s], w[s], f"{where} {s}")
    assert int(g["__step__"][1][0]) == int(w["__step__"][1][0]) == len(sc.BATCHES)


def test_checkpoints_of_two_ranks_load_in_one_process_and_on_three(two, three, tmp):
    cfgs = {c.name: c for c in sc.configs("Adam")}
    for kind in ("column_wise", "hybrid_measured"):
        written = two[0]["value"]["placements"]["saved"][kind]
        plain = {n: EmbeddingTable(c, generator=torch.Generator().manual_seed(9))
                 for n, c in cfgs.items()}
        load_shards(plain, tmp / "placements" / kind)
        for name, table in plain.items():
            got = (table.export()[:2], table.optimizer_state_bytes())
            _same_state(cfgs[name], got, written[name], f"1-process load of {kind} {name}")
        for r, res in enumerate(three):
            for name, got in res["value"]["placements"]["loaded"][kind].items():
                _same_state(cfgs[name], got, written[name], f"3-rank load of {kind} {name} r{r}")


def test_column_blocks_and_offset_init_match_the_whole_row():
    assert column_blocks(10, 3) == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(Exception, match="column_wise"):
        column_blocks(2, 3)
    keys, slots = torch.tensor([3, -7, 2**50]), torch.tensor([0, 1, 0])
    bounds = torch.tensor([0.05, 0.1], dtype=torch.float64)
    whole = init_vectors(keys, slots, bounds, 10, 1234)
    for lo, hi in column_blocks(10, 3):
        part = init_vectors(keys, slots, bounds, hi - lo, 1234, col_offset=lo)
        assert torch.equal(part, whole[:, lo:hi])


def _tables(dims_rows: list[tuple[int, int]], **kw) -> list[TableConfig]:
    return [TableConfig(f"t{i}", "x", dim=d, slot_num=1, max_vocabulary_size=r,
                        optimizer=OptimizerConfig(type="Adam"), **kw)
            for i, (d, r) in enumerate(dims_rows)]


def test_planner_splits_wide_tables_by_columns_and_proposes_hybrid():
    ts = _tables([(256, 1_000_000), (16, 4_000_000)])  # 3 GB wide table, 768 MB narrow one
    pc = planner.PlannerConfig(4, 1 << 30, batch_per_rank=64)
    plan = planner.propose(ts, pc)
    assert plan["t0"].kind == "column_wise" and len(plan["t0"].ranks) == 3  # fewest that fit
    assert plan["t1"].kind in ("table_wise", "row_wise")
    assert max(planner.bytes_per_rank(ts, plan, 4).values()) <= pc.device_memory
    hy = _tables([(16, 4_000_000)], embedding_type="HybridSparseEmbedding")
    assert planner.propose(hy, planner.PlannerConfig(2, 1 << 30))["t0"].kind == "hybrid"
    asked = planner.propose(ts[1:], planner.PlannerConfig(2, 1 << 30, hybrid={"t1"}))
    assert asked["t1"].kind == "hybrid" and asked["t1"].ranks == [0, 1]
    assert planner.hugectr_plan(hy, 2)["t0"].kind == "hybrid"
    text = planner.describe_plan(ts, plan, pc)
    assert "column_wise" in text

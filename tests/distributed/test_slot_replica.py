"""Replicated small slots of the slot exchange (``TERAREC_REPLICATE_SLOT_ROWS``) on gloo ranks.

One one-hot table of 5 slots (3 small, 2 large) with the threshold between: N-rank training
(2 and 3 ranks, uneven last batch) equals one-process training for SGD and AdaGrad (replicated)
and Adam (declined); the all-to-alls carry only the large slots; a sharded save after training
equals the non-replicated run's; a load, then more steps, still equals one process.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from terarec.distributed import state_format
from terarec.embedding.config import TableConfig
from terarec.embedding.table import EmbeddingTable
from terarec.optim.config import OptimizerConfig
from terarec.sparse import SparseInput
from tests.distributed.harness import run_ranks
from tests.distributed.scenarios import dense_step
from tests.distributed.test_sharded_training import TOL, assert_same_table

SIZES = [30, 300, 20, 400, 50]
SMALL = [0, 2, 4]  # slots with <= THRESHOLD rows
THRESHOLD = 100
BATCHES = [12, 12, 12, 7]
LR = {"SGD": 0.5, "AdaGrad": 0.1, "Adam": 0.05}
OPTS = ("SGD", "AdaGrad", "Adam")


def config(opt: str) -> TableConfig:
    return TableConfig("t", "in_t", dim=4, combiner="sum", slot_num=len(SIZES),
                       max_vocabulary_size=sum(SIZES), embedding_type=
                       "LocalizedSlotSparseEmbeddingOneHot", slot_size_array=SIZES, hotness=1,
                       optimizer=OptimizerConfig(type=opt, update_type="Global"))


def batches(seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    starts = np.cumsum([0, *SIZES])
    out = []
    for n in BATCHES:
        keys = [[[int(rng.integers(0, min(12, size))) + int(starts[s])]
                 for s, size in enumerate(SIZES)] for _ in range(n)]
        out.append({"sparse": SparseInput.from_lists(keys),
                    "label": torch.from_numpy((rng.random((n, 1)) < 0.5).astype(np.float32))})
    return out


def head() -> torch.nn.Linear:
    g = torch.Generator().manual_seed(7)
    lin = torch.nn.Linear(len(SIZES) * 4, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
        lin.bias.zero_()
    return lin


def train(table: Any, lin: torch.nn.Linear, opt: str, seed: int, dp: Any = None,
          rank: int = 0, world: int = 1) -> list[float]:
    table.set_learning_rate(LR[opt])
    losses = []
    for b in batches(seed):
        sp, label = b["sparse"], b["label"]
        if dp is not None:
            n = label.shape[0]
            lo, hi = n * rank // world, n * (rank + 1) // world
            dp.weight = (hi - lo) / n
            sp = dataclasses.replace(sp.slice_samples(lo, hi),
                                     rank_batch_sizes=dp.rank_batch_sizes(n))
            label = label[lo:hi]
        lin.zero_grad()
        loss = F.binary_cross_entropy_with_logits(lin(table(sp).flatten(1)), label)
        losses.append(dense_step(lin, loss, dp))
    return losses


def snapshot(table: Any, cfg: TableConfig, sharded: bool) -> dict[str, Any]:
    keys, vectors = table.export()[:2]
    if sharded:
        opt = state_format.from_bytes(cfg, table.optimizer_state_bytes(), keys, "test")
    else:
        opt = table.optimizer_state()
    return {"table": (keys, vectors), "opt": opt}


def reference(opt: str) -> dict[str, Any]:
    cfg = config(opt)
    table = EmbeddingTable(cfg, generator=torch.Generator().manual_seed(123))
    lin = head()
    losses = train(table, lin, opt, 0)
    first = snapshot(table, cfg, False)
    losses += train(table, lin, opt, 1)
    return {"losses": losses, "first": first, "final": snapshot(table, cfg, False)}


def _collection(cfg: TableConfig, world: int, seed: int) -> Any:
    from terarec.distributed.collection import ShardedEmbeddingCollection
    from terarec.embedding.plan import ShardingPlan, TablePlacement

    plan = ShardingPlan({"t": TablePlacement("table_wise", list(range(world)))})
    return ShardedEmbeddingCollection([cfg], plan, generator=torch.Generator().manual_seed(seed))


def _rank(rank: int, world: int, folder: str, opts: tuple[str, ...] = OPTS,
          fused: bool = False, slot_major: bool = False) -> dict[str, Any]:
    os.environ["TERAREC_SLOT_MAJOR_EXCHANGE"] = "1" if slot_major else "0"
    if fused:  # the fused-kernel twin through Triton's interpreter (TRITON_INTERPRET=1)
        from terarec.embedding import fast_path
        from terarec.kernels import use_triton

        fast_path.ALLOW_CPU = True
        with use_triton(True):
            return _rank(rank, world, folder, opts, slot_major=slot_major)
    from terarec.distributed import comm
    from terarec.distributed.checkpoint import load_shards, save_shards
    from terarec.distributed.data_parallel import DataParallel

    sent: list[int] = []
    plain = comm.all_to_all_rows

    def counting(send, send_counts, recv_counts, group=None):  # noqa: ANN001, ANN202
        sent.append(sum(send_counts))
        return plain(send, send_counts, recv_counts, group)

    comm.all_to_all_rows = counting
    out: dict[str, Any] = {}
    for opt in opts:
        cfg = config(opt)
        res: dict[str, Any] = {}
        for mode in ("plain", "replicated"):
            os.environ["TERAREC_REPLICATE_SLOT_ROWS"] = str(THRESHOLD) if mode != "plain" \
                else "0"
            coll = _collection(cfg, world, 123)
            table = coll.tables["t"]
            lin = head()
            sent.clear()
            losses = train(table, lin, opt, 0, DataParallel(), rank, world)
            ex = table._exchange
            res[mode] = {"losses": losses, "sent": list(sent), "fused":
                         bool(getattr(ex.replica.replica if ex.replica is not None
                                      else table.shard, "_fast_ready", False)) and
                         fast_path_applies(table), "first":
                         snapshot(table, cfg, True), "slots_of": ex.slots_of,
                         "replicated": ex.replica.slots if ex.replica is not None else []}
            if mode == "replicated":  # save, load into a fresh collection, train on
                path = os.path.join(folder, f"{opt}_{world}")
                save_shards({"t": table}, path)
                comm.barrier()
                coll2 = _collection(cfg, world, 5)
                table2 = coll2.tables["t"]
                # SGD's optimizer file holds only the step counter: loaded as well
                load_shards({"t": table2}, path, optimizer=True)
                res[mode]["losses"] += train(table2, lin, opt, 1, DataParallel(), rank, world)
                res[mode]["final"] = snapshot(table2, cfg, True)
        out[opt] = res
    os.environ.pop("TERAREC_REPLICATE_SLOT_ROWS", None)
    return out


def fast_path_applies(table: Any) -> bool:
    from terarec.embedding import fast_path

    return fast_path.rule_applies(table.shard)


def _same(got: dict[str, Any], ref: dict[str, Any], opt: str, where: str) -> None:
    assert_same_table(got["table"], ref["table"], where)
    for state in state_format.state_names(config(opt)):
        assert_same_table(got["opt"][state], ref["opt"][state], f"{where} {state}")


@pytest.mark.parametrize("world", [2, 3])
def test_replicated_slots_equal_one_process(world: int, tmp_path) -> None:
    check(run_ranks(_rank, world, str(tmp_path), timeout=240), world, OPTS, False)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_replicated_slots_slot_major_equal_one_process(world: int, tmp_path) -> None:
    """The same with the slot-major layout (``TERAREC_SLOT_MAJOR_EXCHANGE``): the replicated
    slots' rows land in the slot-major buffer, their gradients leave it (one rank: every
    block local)."""
    opts = ("SGD", "Adam")
    check(run_ranks(_slot_major_rank, world, str(tmp_path), opts, timeout=240), world, opts,
          False, slot_major=True)


def _slot_major_rank(rank: int, world: int, folder: str, opts: tuple[str, ...]) -> dict:
    if world == 1:
        os.environ["TERAREC_EXCHANGE_AT_ONE_RANK"] = "1"
    return _rank(rank, world, folder, opts, slot_major=True)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_fused_twin_replicated_slots(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("the interpreter variant runs on CPU machines")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # inherited by the spawned ranks
    opts = ("SGD", "AdaGrad")
    check(run_ranks(_rank, 2, str(tmp_path), opts, True, timeout=300), 2, opts, True)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_fused_twin_replicated_slots_slot_major(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path) -> None:
    """Slot-major + fused kernels: the replicated rows pooled straight into their rows of the
    slot-major buffer (``pooled_lookup(out_rows=...)``), their gradients summed in place
    (``row_sums(grad_rows=...)``)."""
    if torch.cuda.is_available():
        pytest.skip("the interpreter variant runs on CPU machines")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # inherited by the spawned ranks
    opts = ("SGD",)
    check(run_ranks(_rank, 2, str(tmp_path), opts, True, True, timeout=300), 2, opts, True,
          slot_major=True)


def check(results: list[dict], world: int, opts: tuple[str, ...], fused: bool,
          slot_major: bool = False) -> None:
    refs = {opt: reference(opt) for opt in opts}
    for r, res in enumerate(results):
        for opt in opts:
            ref, got = refs[opt], res["value"][opt]
            rep, plain = got["replicated"], got["plain"]
            where = f"{world} ranks, rank {r}, {opt}"
            replicates = opt != "Adam"
            assert rep["replicated"] == (SMALL if replicates else []), where
            big = [s for s in range(len(SIZES)) if not replicates or s not in SMALL]
            assert sorted(s for ss in rep["slots_of"] for s in ss) == big, where
            # keys / vectors / gradients: b_local x (non-replicated slots) rows per step
            b = [hi - lo for n in BATCHES
                 for lo, hi in [(n * r // world, n * (r + 1) // world)]]
            sent = rep["sent"]
            want = [n * len(big) for n in b]
            if slot_major:  # rows all-to-all: the keys only (vectors, gradients: blocks)
                assert sent == want, (where, sent, want)
            else:
                assert len(sent) == 3 * len(BATCHES), where
                assert sent[0::3] == want and sent[2::3] == want, (where, sent, want)
                mine = len(rep["slots_of"][r])  # vectors sent back by this owner
                assert sent[1::3] == [n * mine for n in BATCHES], (where, sent)
            assert plain["replicated"] == [], where
            assert rep["fused"] == fused and plain["fused"] == fused, where
            np.testing.assert_allclose(rep["losses"], ref["losses"], atol=TOL, err_msg=where)
            np.testing.assert_allclose(plain["losses"], ref["losses"][:len(BATCHES)], atol=TOL,
                                       err_msg=where)
            _same(rep["first"], plain["first"], opt, f"{where} save vs plain")
            _same(rep["first"], ref["first"], opt, f"{where} save vs 1 process")
            _same(rep["final"], ref["final"], opt, f"{where} after load + steps")

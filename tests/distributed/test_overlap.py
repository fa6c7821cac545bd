"""The next batch's key exchange issued during the current step (``TERAREC_OVERLAP_INPUT_DIST``,
:mod:`terarec.distributed.overlap`) on 2 gloo ranks.

* The collection with :meth:`prefetch` after each forward (routed tables through the fused
  exchange, the slot-wise one-hot exchange, a plan with a replicated table where the fused group
  is not pre-issued), uneven last batch: equals one-process training (losses, dense weights,
  tables, optimizer states).
* The HugeCTR facade in epoch mode (uneven last global batch: 45 samples = 22 + 23), two epochs,
  an evaluation in the middle of the first: equals one process, for a row-wise, a slot-wise hash
  and a slot-wise one-hot table; the switch at ``0`` issues nothing ahead.
* Batches passed to ``Model.train(batch)`` by hand, each step announcing the next one
  (``announce_next_batch``): the same overlap, equal to one process.
* Order: each step but an epoch's last issues the next batch's keys all-to-all before its own
  dense gradient all-reduce (its dense step), and the next step waits on exactly that exchange
  instead of issuing one (events recorded by wrapping ``comm`` and ``DataParallel.grad_sync``).
* An exchange issued for other tensors than the next forward's is never used.
* The reader's look-ahead (order, end, errors, close) and the switches, without ranks.
* Marked ``multigpu``: the collection scenarios and the facade (overlap on vs off) on 2 GPUs
  over NCCL.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from terarec.distributed import state_format
from tests.distributed import scenarios as sc
from tests.distributed.harness import run_ranks
from tests.distributed.test_sharded_training import (
    TOL,
    assert_same_model,
    assert_same_run,
    assert_same_table,
)
from tests.helpers.models import build_dcn
from tests.helpers.synth import raw_async_dataset

#: (plan kind, optimizer, one-hot tables, tagged batch sizes, async exchanges per step)
COLLECTION = [("row_wise", "Adam", False, False, 1), ("table_wise", "SGD", True, True, 2),
              ("mixed", "Adam", False, False, 0)]
KINDS = ("dist", "local", "onehot")
EPOCHS = 2


def _record(events: list) -> None:
    """Log every keys exchange issued ahead, every wait on one and every dense all-reduce."""
    from terarec.distributed import comm
    from terarec.distributed.data_parallel import DataParallel

    issue, wait, sync = comm.all_to_all_rows_async, comm.PendingRows.wait, DataParallel.grad_sync
    rows = comm.all_to_all_rows

    def exchanging(*a, **k):  # noqa: ANN002, ANN003, ANN202
        events.append("rows")
        return rows(*a, **k)

    def issuing(*a, **k):  # noqa: ANN002, ANN003, ANN202
        events.append("issue")
        return issue(*a, **k)

    def waiting(self):  # noqa: ANN001, ANN202
        events.append("wait")
        return wait(self)

    def syncing(self, grads):  # noqa: ANN001, ANN202
        events.append("grad_sync")
        return sync(self, grads)

    comm.all_to_all_rows = exchanging
    comm.all_to_all_rows_async = issuing
    comm.PendingRows.wait = waiting
    DataParallel.grad_sync = syncing


def _steps(events: list, rows: bool = False) -> list[list]:
    """The events between step markers (ints), one list per step (``rows``: also the
    synchronous all-to-alls of rows)."""
    out: list[list] = []
    for e in events:
        if isinstance(e, int):
            out.append([])
        elif out and (rows or e != "rows"):
            out[-1].append(e)
    return out


# ---------------------------------------------------------------------- collection
def collection_ahead(rank: int, world: int, kind: str, opt: str, onehot: bool, tag: bool,
                     events: list, stale: bool = False, device: str = "cpu") -> dict[str, Any]:
    """``sc.train`` through the collection, with :meth:`prefetch` of the next batch after each
    forward (``stale``: of a copy of it, which the next forward must not use)."""
    from terarec.distributed.collection import ShardedEmbeddingCollection
    from terarec.distributed.data_parallel import DataParallel

    cfgs = sc.configs(opt, "Global", onehot)
    coll = ShardedEmbeddingCollection(cfgs, sc.plan_for(kind, world), device,
                                      generator=torch.Generator().manual_seed(123))
    dp = DataParallel()
    for t in coll.tables.values():
        t.set_learning_rate(sc.LR[opt])
    parts = []  # every step's slice, made up front: the prefetch sees the step's own tensors
    for b in sc.batches():
        n = b["label"].shape[0]
        lo, hi = n * rank // world, n * (rank + 1) // world
        part = sc._slice(b, lo, hi)
        part = {"sparse": {k: v.to(device) for k, v in part["sparse"].items()},
                "dense": part["dense"].to(device), "label": part["label"].to(device)}
        if tag:
            sizes = dp.rank_batch_sizes(n)
            part["sparse"] = {k: dataclasses.replace(v, rank_batch_sizes=sizes)
                              for k, v in part["sparse"].items()}
        parts.append((part, (hi - lo) / n))
    lin = sc.head().to(device)
    losses = []
    for i, (b, w) in enumerate(parts):
        events.append(i)
        dp.weight = w
        lin.zero_grad()
        got = coll(b["sparse"])
        if i + 1 < len(parts):
            nxt = parts[i + 1][0]["sparse"]
            if stale:  # same keys, other tensors: not the batch the next forward gets
                nxt = {k: dataclasses.replace(v, keys=v.keys.clone()) for k, v in nxt.items()}
            coll.prefetch(nxt)
        pooled = [got[c.name].flatten(1) for c in cfgs]
        logits = lin(torch.cat([*pooled, b["dense"]], 1))
        losses.append(sc.dense_step(lin, F.binary_cross_entropy_with_logits(logits, b["label"]),
                                    dp))
    out: dict[str, Any] = {"losses": losses, "dense": [p.detach().cpu().clone()
                                                       for p in lin.parameters()]}
    out["tables"] = {n: t.export()[:2] for n, t in coll.tables.items()}
    out["opt"] = {c.name: state_format.from_bytes(c, coll.tables[c.name].optimizer_state_bytes(),
                                                  out["tables"][c.name][0], "test")
                  for c in cfgs}
    out["fixed_steps"] = {n: t._exchange._steps for n, t in coll.tables.items()
                          if getattr(t, "_exchange", None) is not None}
    return out


# ---------------------------------------------------------------------- HugeCTR facade
def build(data: dict[str, Any], kind: str) -> Any:
    """``model_scenarios.build`` in epoch mode, keeping the uneven last batch."""
    emb = {"dist": None, "local": "LocalizedSlotSparseEmbeddingHash",
           "onehot": "LocalizedSlotSparseEmbeddingOneHot"}[kind]
    model = build_dcn(data, batchsize=64, lr=0.01, repeat=False, drop_incomplete_batch=False)
    if emb is not None:
        model.spec.embeddings[0].embedding_type = emb
    if kind == "onehot":
        model.spec.embeddings[0].slot_size_array = list(data["slot_sizes"])
    model.compile()
    return model


def model_epochs(data: dict[str, Any], kind: str, events: list) -> dict[str, Any]:
    model = build(data, kind)
    sched = model.get_learning_rate_scheduler()
    losses, auc, step = [], None, 0
    for epoch in range(EPOCHS):
        model.start_epoch()
        n = 0
        while True:
            events.append(step)
            model.set_learning_rate(sched.get_next())
            if not model.train():
                events.pop()
                break
            losses.append(model.get_current_loss())
            step += 1
            n += 1
            if epoch == 0 and n == 2:  # evaluation while the next batch's keys travel
                auc = model.evaluate(num_batches=1)["AUC"]
    table = model.engine.tables["emb"]
    exchange = getattr(table, "_exchange", None)
    keys, vecs, _ = table.export()
    return {"losses": losses, "auc": auc, "dense": model.dense_weights_numpy(),
            "table": (np.asarray(keys), np.asarray(vecs)),
            "fixed_steps": exchange._steps if exchange is not None else 0}


def model_announced(data: dict[str, Any], kind: str, events: list) -> dict[str, Any]:
    """The epochs of :func:`model_epochs` as batches passed by hand (the reader's batches, read
    up front; the same objects each epoch), each step announcing the next one."""
    from terarec.distributed import announce_next_batch

    model = build(data, kind)
    batches = []
    while (b := model.train_reader.next_batch()) is not None:
        batches.append(b)
    order = batches * EPOCHS
    sched = model.get_learning_rate_scheduler()
    losses = []
    for step, batch in enumerate(order):
        events.append(step)
        if step + 1 < len(order):
            announce_next_batch(model, order[step + 1])
        model.set_learning_rate(sched.get_next())
        assert model.train(batch)
        losses.append(model.get_current_loss())
    keys, vecs, _ = model.engine.tables["emb"].export()
    return {"losses": losses, "dense": model.dense_weights_numpy(),
            "table": (np.asarray(keys), np.asarray(vecs))}


def ranks(rank: int, world: int, data: dict[str, Any]) -> dict[str, Any]:
    os.environ["TERAREC_OVERLAP_INPUT_DIST"] = "1"  # opt-in
    events: list = []
    _record(events)
    out: dict[str, Any] = {"collection": {}, "model": {}, "events": {}}
    for kind, opt, onehot, tag, _ in COLLECTION:
        events.clear()
        out["collection"][kind] = collection_ahead(rank, world, kind, opt, onehot, tag, events)
        out["events"][kind] = _steps(events)
        out["events"][f"{kind}/rows"] = _steps(events, rows=True)
    events.clear()
    out["collection"]["stale"] = collection_ahead(rank, world, "row_wise", "Adam", False, False,
                                                  events, stale=True)
    out["events"]["stale"] = _steps(events, rows=True)
    for kind in KINDS:
        events.clear()
        out["model"][kind] = model_epochs(data, kind, events)
        out["events"][f"model/{kind}"] = _steps(events)
    events.clear()
    out["model"]["announced"] = model_announced(data, "onehot", events)
    out["events"]["model/announced"] = _steps(events)
    os.environ["TERAREC_OVERLAP_INPUT_DIST"] = "0"
    events.clear()
    out["model"]["off"] = model_epochs(data, "dist", events)
    out["events"]["model/off"] = _steps(events)
    return out


def ranks_nccl(rank: int, world: int, data: dict[str, Any]) -> dict[str, Any]:
    """The collection scenarios on CUDA tensors over NCCL, and the facade with the overlap on
    and off (GPU sums: compared with each other and with one process at 1e-4)."""
    events: list = []
    _record(events)
    out: dict[str, Any] = {"collection": {}, "model": {}, "events": {}}
    for kind, opt, onehot, tag, _ in COLLECTION:
        events.clear()
        out["collection"][kind] = collection_ahead(rank, world, kind, opt, onehot, tag, events,
                                                   device=f"cuda:{rank}")
        out["events"][kind] = _steps(events)
    for switch in ("1", "0"):
        os.environ["TERAREC_OVERLAP_INPUT_DIST"] = switch
        for kind in ("dist", "onehot"):
            events.clear()
            out["model"][f"{kind}/{switch}"] = model_epochs(data, kind, events)
            out["events"][f"model/{kind}/{switch}"] = _steps(events)
    return out


@pytest.fixture(scope="module")
def epoch_data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("raw_overlap"), n_train=301, n_eval=64)


@pytest.fixture(scope="module")
def two_ahead(epoch_data):
    return run_ranks(ranks, 2, epoch_data, timeout=240)


def test_collection_prefetch_equals_one_process(two_ahead) -> None:
    for kind, opt, onehot, _, per_step in COLLECTION:
        ref = sc.reference(opt, "Global", onehot)
        for r, res in enumerate(two_ahead):
            got = res["value"]["collection"][kind]
            where = f"rank {r}, {kind}/{opt}"
            assert_same_run(got, ref, where)
            for name in "abc":
                for state in state_format.state_names(sc.configs(opt)[0]):
                    assert_same_table(got["opt"][name][state], ref["opt"][name][state],
                                      f"{where} {name} {state}")
            if onehot:  # table a took the fixed-size exchange on every step
                assert got["fixed_steps"]["a"] == len(sc.BATCHES), where
            # every step but the last issues the next batch's keys before its dense step;
            # every step but the first waits on them instead of exchanging
            steps = res["value"]["events"][kind]
            last = len(sc.BATCHES) - 1
            want = [["wait"] * (per_step if i else 0) + ["issue"] * (per_step if i < last else 0)
                    + ["grad_sync"] for i in range(len(sc.BATCHES))]
            assert steps == want, (where, steps)
            # a step whose keys came ahead exchanges only vectors and gradients (fused: one
            # all-to-all each; the slot exchange of table a: one each too)
            rows = [e.count("rows") for e in res["value"]["events"][f"{kind}/rows"]]
            sync = 3 * per_step if per_step else None
            if sync is not None:
                assert rows == [sync] + [sync - per_step] * last, (where, rows)


def test_stale_prefetch_is_not_used(two_ahead) -> None:
    """An exchange issued for other tensors (a copy of the next batch) is never taken: every
    step exchanges its own keys synchronously, a stale one is waited for and dropped by the next
    prefetch, and training still equals one process."""
    ref = sc.reference("Adam")
    last = len(sc.BATCHES) - 1
    for r, res in enumerate(two_ahead):
        got = res["value"]["collection"]["stale"]
        np.testing.assert_allclose(got["losses"], ref["losses"], atol=TOL, err_msg=f"rank {r}")
        for name in "abc":
            assert_same_table(got["tables"][name], ref["tables"][name], f"stale rank {r} {name}")
        steps = res["value"]["events"]["stale"]
        # keys + vectors, (drop the stale one, issue the next), gradients; the last step
        # issues nothing (its stale predecessor stays unused)
        want = [["rows"] * 2 + ["wait", "issue"] * (0 < i < last) + ["issue"] * (i == 0)
                + ["rows", "grad_sync"] for i in range(len(sc.BATCHES))]
        assert steps == want, (r, steps)


def _model_refs(data: dict[str, Any]) -> dict[str, Any]:
    return {kind: model_epochs(data, kind, []) for kind in KINDS}


def test_model_overlap_equals_one_process_epochs(two_ahead, epoch_data) -> None:
    refs = _model_refs(epoch_data)
    n_steps = len(refs["dist"]["losses"])
    assert n_steps == EPOCHS * 5  # 4 x 64 + 45 samples per epoch
    for r, res in enumerate(two_ahead):
        for kind in (*KINDS, "off"):
            ref = refs["dist" if kind == "off" else kind]
            got = res["value"]["model"][kind]
            where = f"rank {r}, model {kind}"
            assert_same_model(got, ref, where)
            if kind == "onehot":  # every train step and the eval step: the fixed exchange
                assert got["fixed_steps"] == n_steps + 1, where
        got = res["value"]["model"]["announced"]  # batches by hand, the next one announced
        ref = refs["onehot"]
        np.testing.assert_allclose(got["losses"], ref["losses"], atol=TOL, err_msg="announced")
        for a, b in zip(got["dense"], ref["dense"]):
            np.testing.assert_allclose(a, b, atol=TOL, err_msg="announced")
        assert_same_table(got["table"], ref["table"], f"rank {r}, announced")


def test_model_issues_next_keys_before_dense_step(two_ahead) -> None:
    per_epoch = 5
    for r, res in enumerate(two_ahead):
        for kind in KINDS:
            steps = res["value"]["events"][f"model/{kind}"]
            want = []
            for _ in range(EPOCHS):  # the first step of an epoch has nothing issued ahead;
                # its last finds no next batch (the reader's end) and issues nothing
                for i in range(per_epoch):
                    want.append(["wait"] * (i > 0) + ["issue"] * (i < per_epoch - 1)
                                + ["grad_sync"])
            assert steps == want, (r, kind, steps)
        # batches passed by hand, each step announcing the next (also across the epochs)
        steps = res["value"]["events"]["model/announced"]
        n = EPOCHS * per_epoch
        want = [["wait"] * (i > 0) + ["issue"] * (i < n - 1) + ["grad_sync"] for i in range(n)]
        assert steps == want, (r, "announced", steps)
        off = res["value"]["events"]["model/off"]
        assert off == [["grad_sync"]] * (EPOCHS * per_epoch), (r, off)


# ---------------------------------------------------------------------- no ranks
class _Slot:
    """A stand-in ``ReaderSlot``: ``items`` then the end (None); an Exception item raises."""

    def __init__(self, items: list) -> None:
        self.items = list(items)
        self.closed = 0
        self.open = False

    def next_batch(self) -> Any:
        self.open = True
        if not self.items:
            self.close()
            return None
        item = self.items.pop(0)
        if isinstance(item, Exception):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self.closed += 1
        self.open = False

    def start(self) -> None:
        self.open = True

    def is_started(self) -> bool:
        return self.open

    def ready_to_collect(self) -> bool:
        return self.open


def test_lookahead_keeps_the_reader_order_end_and_errors() -> None:
    from terarec.distributed.overlap import Lookahead

    slot = _Slot(["b0", "b1"])
    ahead = Lookahead(slot)
    assert slot.next_batch() == "b0" and ahead.last == "b0"
    assert ahead.peek() == "b1" and ahead.peek() == "b1"  # read once
    assert slot.next_batch() == "b1" and ahead.last == "b1"
    assert ahead.peek() is None  # the end, read early: the slot closed itself
    assert slot.ready_to_collect() and slot.is_started()  # as before the end is handed out
    assert slot.next_batch() is None and not slot.ready_to_collect()

    slot = _Slot(["b0", ValueError("bad row"), "b2"])
    ahead = Lookahead(slot)
    assert slot.next_batch() == "b0"
    assert ahead.peek() is None  # the error waits for the next next_batch
    with pytest.raises(ValueError, match="bad row"):
        slot.next_batch()
    assert slot.next_batch() == "b2"

    slot = _Slot(["b0", "b1", "b2"])
    ahead = Lookahead(slot)
    slot.next_batch()
    ahead.peek()
    slot.close()  # restart / set_source / a new epoch: the held batch goes with the threads
    assert slot.next_batch() == "b2"


def test_whole_step_graph_turns_the_overlap_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from terarec.distributed import overlap

    cuda = SimpleNamespace(use_cuda_graph=True, device=torch.device("cuda", 0))
    monkeypatch.delenv("TERAREC_DP_STEP_GRAPH", raising=False)
    assert not overlap.whole_step_graph(cuda)  # dense-only graph: the overlap runs around it
    monkeypatch.setenv("TERAREC_DP_STEP_GRAPH", "1")
    assert overlap.whole_step_graph(cuda)
    assert not overlap.whole_step_graph(SimpleNamespace(use_cuda_graph=False,
                                                        device=torch.device("cuda", 0)))
    assert not overlap.whole_step_graph(SimpleNamespace(use_cuda_graph=True,
                                                        device=torch.device("cpu")))
    monkeypatch.delenv(overlap.ENV, raising=False)
    assert not overlap.enabled()  # the default: opt-in until measured on NCCL
    monkeypatch.setenv(overlap.ENV, "1")
    assert overlap.enabled()
    monkeypatch.setenv(overlap.ENV, "0")
    assert not overlap.enabled()


@pytest.mark.multigpu
def test_nccl_two_gpus_overlap(epoch_data) -> None:
    """The same on 2 CUDA GPUs over NCCL (async all-to-all on NCCL's stream)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2+ CUDA GPUs")
    results = run_ranks(ranks_nccl, 2, epoch_data, backend="nccl", timeout=300)
    last = len(sc.BATCHES) - 1
    for kind, opt, onehot, _, per_step in COLLECTION:
        ref = sc.reference(opt, "Global", onehot)
        for r, res in enumerate(results):
            got = res["value"]["collection"][kind]
            where = f"nccl rank {r}, {kind}/{opt}"
            np.testing.assert_allclose(got["losses"], ref["losses"], atol=1e-4, err_msg=where)
            for name in "abc":
                assert_same_table(got["tables"][name], ref["tables"][name], f"{where} {name}",
                                  1e-4)
            want = [["wait"] * (per_step if i else 0) + ["issue"] * (per_step if i < last else 0)
                    + ["grad_sync"] for i in range(len(sc.BATCHES))]
            assert res["value"]["events"][kind] == want, where
    per_epoch = 5
    for r, res in enumerate(results):
        for kind in ("dist", "onehot"):
            on, off = res["value"]["model"][f"{kind}/1"], res["value"]["model"][f"{kind}/0"]
            where = f"nccl rank {r}, model {kind}"
            np.testing.assert_allclose(on["losses"], off["losses"], rtol=1e-4, atol=1e-5,
                                       err_msg=where)
            want = [["wait"] * (i > 0) + ["issue"] * (i < per_epoch - 1) + ["grad_sync"]
                    for _ in range(EPOCHS) for i in range(per_epoch)]
            assert res["value"]["events"][f"model/{kind}/1"] == want, where
            assert res["value"]["events"][f"model/{kind}/0"] == \
                [["grad_sync"]] * (EPOCHS * per_epoch), where

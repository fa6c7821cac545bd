"""``TERAREC_EXCHANGE_AT_ONE_RANK=1``: a process group of one rank runs the sharded path
(input_dist -> lookup -> output_dist, collectives with itself) instead of the one-process
shortcut, and trains exactly as one process does.

* gloo, one rank, the HugeCTR facade in epoch mode (row-wise hash, slot-wise hash, slot-wise
  one-hot: the fixed-size slot exchange on every step), with the next batch's keys issued ahead
  (``TERAREC_OVERLAP_INPUT_DIST``) and without: the same losses, AUC, dense weights and table
  as the one-process run, and the all-to-alls were really taken.
* The one-hot table in the slot-major layout (``TERAREC_SLOT_MAJOR_EXCHANGE``) too.
* Marked ``gpu``: the same on one GPU over NCCL (the NCCL code paths on a one-GPU machine).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

from tests.distributed.harness import run_ranks
from tests.distributed.test_overlap import KINDS, _record, _steps, epoch_data, model_epochs
from tests.distributed.test_sharded_training import TOL, assert_same_model, assert_same_table

__all__ = ["epoch_data"]  # the module fixture, shared with test_overlap


def one_rank(rank: int, world: int, data: dict[str, Any]) -> dict[str, Any]:
    os.environ["TERAREC_EXCHANGE_AT_ONE_RANK"] = "1"
    events: list = []
    _record(events)
    out: dict[str, Any] = {}
    for switch in ("0", "1"):
        os.environ["TERAREC_OVERLAP_INPUT_DIST"] = switch
        for kind in KINDS:
            events.clear()
            out[f"{kind}/{switch}"] = model_epochs(data, kind, events)
            out[f"{kind}/{switch}/events"] = _steps(events, rows=True)
    os.environ["TERAREC_SLOT_MAJOR_EXCHANGE"] = "1"  # the owner's lookup is the output buffer
    out["onehot/slot_major"] = model_epochs(data, "onehot", [])
    os.environ["TERAREC_SLOT_MAJOR_EXCHANGE"] = "0"
    return out


def _check(results: list[dict[str, Any]], refs: dict[str, Any], tol: float) -> None:
    (res,) = results
    for switch in ("0", "1"):
        for kind in KINDS:
            got, ref = res["value"][f"{kind}/{switch}"], refs[kind]
            where = f"{kind}, overlap {switch}"
            assert_same_model(got, ref, where, tol, auc_tol=1e-5)
            events = res["value"][f"{kind}/{switch}/events"]
            # the sharded path: every train step exchanges rows with the group (keys, vectors,
            # gradients; keys ahead with the overlap on)
            assert all(any(e in ("rows", "issue", "wait") for e in step) for step in events), \
                (where, events)
            if kind == "onehot":  # every train step and the evaluation: the fixed exchange
                assert got["fixed_steps"] == len(ref["losses"]) + 1, where
    got, ref = res["value"]["onehot/slot_major"], refs["onehot"]
    np.testing.assert_allclose(got["losses"], ref["losses"], atol=tol, err_msg="slot-major")
    assert_same_table(got["table"], ref["table"], "slot-major", tol)
    assert got["fixed_steps"] == len(ref["losses"]) + 1
    assert refs["onehot"]["fixed_steps"] == 0  # the one-process run took no exchange


@pytest.fixture(scope="module")
def refs(epoch_data) -> dict[str, Any]:
    return {kind: model_epochs(epoch_data, kind, []) for kind in KINDS}


def test_one_rank_gloo_runs_the_exchange_and_equals_one_process(epoch_data, refs) -> None:
    _check(run_ranks(one_rank, 1, epoch_data, timeout=240), refs, TOL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_rank_nccl_runs_the_exchange_and_equals_one_process(epoch_data, refs) -> None:
    _check(run_ranks(one_rank, 1, epoch_data, backend="nccl", timeout=300), refs, 1e-4)

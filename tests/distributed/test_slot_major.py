"""The slot-major layout of the slot exchange (``TERAREC_SLOT_MAJOR_EXCHANGE=1``): keys per
owner as ``[slot][sample]``, vectors and gradients as point-to-point blocks straight into /
out of a ``[slot_num, b, dim]`` buffer whose ``[b, slot_num, dim]`` view is the forward's
output.

* 2 and 3 gloo ranks (3: a rank that owns no slot of the table; the last batch of 7 samples is
  uneven: 3 + 4 and 2 + 2 + 3), SGD and Adam, the reference twin and the Triton-interpreter
  twin of the fused kernels: equals one-process training (losses, tables, optimizer states),
  and the output really is the slot-major view.
* The HugeCTR facade on 2 gloo ranks (one-hot table, epoch mode with its uneven last batch, an
  evaluation mid-epoch), with and without the next batch's keys issued ahead: equals one
  process; and a world of one (``TERAREC_EXCHANGE_AT_ONE_RANK``), where the owner's lookup
  is the buffer itself.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np
import pytest
import torch

from tests.distributed import scenarios as sc
from tests.distributed.harness import run_ranks
from tests.distributed.test_overlap import epoch_data, model_epochs
from tests.distributed.test_sharded_training import TOL, assert_same_model, assert_same_table

__all__ = ["epoch_data"]  # the module fixture, shared with test_overlap

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _collection_rank(rank: int, world: int, opt: str, update: str, fused_kernels: bool) -> dict:
    os.environ["TERAREC_SLOT_MAJOR_EXCHANGE"] = "1"
    from terarec.distributed.slot_exchange import SlotExchange
    from terarec.embedding import fast_path
    from terarec.kernels import use_triton

    layouts: list[tuple] = []
    call = SlotExchange.__call__

    def recording(self, sparse):  # noqa: ANN001, ANN202
        out = call(self, sparse)
        layouts.append((self.slot_major, tuple(out.shape), tuple(out.stride())))
        return out

    SlotExchange.__call__ = recording  # type: ignore[method-assign]
    fast_path.ALLOW_CPU = fused_kernels
    with use_triton(fused_kernels):
        out = sc.sharded(rank, world, "slot_wise", opt, update, onehot=True, tag=True)
    out["layouts"] = layouts
    return out


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_slot_major_equals_one_process(world: int, opt: str) -> None:
    ref = sc.reference(opt, "Global", onehot=True)
    for r, res in enumerate(run_ranks(_collection_rank, world, opt, "Global", False,
                                      timeout=240)):
        _check(res["value"], ref, f"rank {r}/{world}, {opt}")


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize(("opt", "update"), [("SGD", "Global"), ("Adam", "Local")])
def test_slot_major_fused_twin_equals_one_process(monkeypatch: pytest.MonkeyPatch, opt: str,
                                                  update: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("the interpreter variant runs on CPU machines")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # inherited by the spawned ranks
    ref = sc.reference(opt, update, onehot=True)
    for r, res in enumerate(run_ranks(_collection_rank, 2, opt, update, True, timeout=300)):
        assert res["value"]["fused_kernels"]["a"], r
        _check(res["value"], ref, f"rank {r}, fused twin")


def _check(got: dict, ref: dict, where: str) -> None:
    assert got["fixed_steps"]["a"] == len(sc.BATCHES), where
    for slot_major, shape, stride in got["layouts"]:
        b, s, d = shape
        assert slot_major and stride == (d, b * d, 1), (where, shape, stride)
    np.testing.assert_allclose(got["losses"], ref["losses"], atol=TOL, err_msg=where)
    for name in "abc":
        assert_same_table(got["tables"][name], ref["tables"][name], f"{where} {name}")


def _model_rank(rank: int, world: int, data: dict[str, Any]) -> dict[str, Any]:
    os.environ["TERAREC_SLOT_MAJOR_EXCHANGE"] = "1"
    out = {}
    for switch in ("0", "1"):
        os.environ["TERAREC_OVERLAP_INPUT_DIST"] = switch
        out[switch] = model_epochs(data, "onehot", [])
    return out


def _one_rank(rank: int, world: int, data: dict[str, Any]) -> dict[str, Any]:
    os.environ["TERAREC_EXCHANGE_AT_ONE_RANK"] = "1"
    return _model_rank(rank, world, data)


@pytest.mark.parametrize("world", [1, 2])
def test_slot_major_model_equals_one_process(epoch_data, world: int) -> None:
    ref = model_epochs(epoch_data, "onehot", [])
    fn = _one_rank if world == 1 else _model_rank
    for r, res in enumerate(run_ranks(fn, world, epoch_data, timeout=240)):
        for switch, got in res["value"].items():
            where = f"rank {r}/{world}, overlap {switch}"
            assert_same_model(got, ref, where)
            assert got["fixed_steps"] == len(ref["losses"]) + 1, where


def _nccl_rank(rank: int, world: int, opt: str, update: str) -> dict:
    os.environ["TERAREC_SLOT_MAJOR_EXCHANGE"] = "1"
    return sc.sharded(rank, world, "slot_wise", opt, update, device=f"cuda:{rank}",
                      onehot=True, tag=True)


@pytest.mark.multigpu
@pytest.mark.parametrize(("opt", "update"), [("SGD", "Global"), ("Adam", "Local")])
def test_nccl_two_gpus_slot_major(opt: str, update: str) -> None:
    """The point-to-point blocks over NCCL (fused kernels on the GPUs): one process's run."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2+ CUDA GPUs")
    ref = sc.reference(opt, update, onehot=True)
    for r, res in enumerate(run_ranks(_nccl_rank, 2, opt, update, backend="nccl",
                                      timeout=300)):
        got = res["value"]
        where = f"nccl rank {r}, {opt}"
        assert got["fixed_steps"]["a"] == len(sc.BATCHES), where
        np.testing.assert_allclose(got["losses"], ref["losses"], atol=1e-4, err_msg=where)
        for name in "abc":
            assert_same_table(got["tables"][name], ref["tables"][name], f"{where} {name}", 1e-4)

"""The fixed-size slot exchange (``terarec.distributed.slot_exchange``) on 2 gloo ranks.

* Its fused-kernel twin (Triton's interpreter on CPU: ``TRITON_INTERPRET=1`` in the ranks,
  ``fast_path.ALLOW_CPU``) equals one-process training, as the reference twin does in
  ``test_sharded_training.py``.
* Bad input: a key outside its slot's range, and an input breaking the declared one-hot
  layout, are errors that name the table (never a silent clamp).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from tests.distributed import scenarios as sc
from tests.distributed.harness import run_ranks
from tests.distributed.test_sharded_training import TOL, assert_same_table


def _fast_rank(rank: int, world: int, kind: str, opt: str, update: str) -> dict:
    from terarec.embedding import fast_path
    from terarec.kernels import use_triton

    fast_path.ALLOW_CPU = True
    with use_triton(True):
        out = sc.sharded(rank, world, kind, opt, update, onehot=True, tag=True)
    return out


def _bad_rank(rank: int, world: int, what: str, slot_major: bool = False) -> None:
    import os

    os.environ["TERAREC_SLOT_MAJOR_EXCHANGE"] = "1" if slot_major else "0"
    from terarec.distributed.collection import ShardedEmbeddingCollection
    from terarec.distributed.data_parallel import DataParallel

    cfgs = sc.configs("SGD", onehot=True)
    coll = ShardedEmbeddingCollection(cfgs, sc.plan_for("slot_wise", world),
                                      generator=torch.Generator().manual_seed(1))
    keys = [[[3], [251]], [[4], [252]]]  # 2 samples per rank, slot 1 keys in [250, 500)
    if what == "range" and rank == 0:
        keys[1][1] = [7]  # slot 1 (owned by rank 1) gets a key of slot 0's range
    if what == "hotness" and rank == 0:
        keys[1][1] = [252, 253]
    from terarec.sparse import SparseInput

    sp = SparseInput.from_lists(keys)
    import dataclasses

    sp = dataclasses.replace(sp, rank_batch_sizes=DataParallel().rank_batch_sizes(4))
    coll.tables["a"](sp).sum().backward()


# find_spec, not an import: importing triton here (at collection) would fix its interpreter
# switch for the whole session before the kernel tests set TRITON_INTERPRET=1.
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize(("opt", "update"), [("SGD", "Global"), ("Adam", "Local")])
def test_fused_twin_equals_one_process(monkeypatch: pytest.MonkeyPatch, opt: str,
                                       update: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("the interpreter variant runs on CPU machines (GPU: the NCCL test)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # inherited by the spawned ranks
    ref = sc.reference(opt, update, onehot=True)
    for r, res in enumerate(run_ranks(_fast_rank, 2, "slot_wise", opt, update, timeout=300)):
        got = res["value"]
        where = f"rank {r}, {opt}"
        assert got["fixed_steps"]["a"] == len(sc.BATCHES), where
        assert got["fused_kernels"]["a"], where  # the shard ran the Triton (interpreted) twin
        np.testing.assert_allclose(got["losses"], ref["losses"], atol=TOL, err_msg=where)
        for name in "abc":
            assert_same_table(got["tables"][name], ref["tables"][name], f"{where} {name}")


@pytest.mark.parametrize(("what", "message"), [
    ("range", "every sample needs exactly one key per slot"),
    ("hotness", "exactly one key per slot (its DataReaderSparseParam declares"),
])
@pytest.mark.parametrize("slot_major", [False, True])
def test_bad_one_hot_input_is_an_error(what: str, message: str, slot_major: bool) -> None:
    """The rank that sees the bad input raises; the other one (waiting on it in an exchange,
    all-to-all or point-to-point blocks) fails too instead of hanging."""
    results = run_ranks(_bad_rank, 2, what, slot_major, timeout=120, dist_timeout=15,
                        raise_errors=False)
    assert not any(res["ok"] for res in results), results
    errors = [res.get("error", "") for res in results]
    culprit = 1 if what == "range" else 0  # the owner of the slot sees the key; the sender
    assert "'a'" in errors[culprit] and message in errors[culprit], errors  # its own input

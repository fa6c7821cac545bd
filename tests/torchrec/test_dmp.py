"""DistributedModelParallel on 2 gloo ranks (each its half of every global batch) equals the
one-process run of the same model: losses, dense weights and every table row (1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from terarec.errors import ConfigError
from terarec.torchrec import EmbeddingBagCollection
from terarec.torchrec.model_parallel import DistributedModelParallel
from tests.distributed.harness import run_ranks
from tests.torchrec.dmp_worker import train
from tests.torchrec.test_ebc import tables

TOL = 1e-5


def assert_same(got: dict, ref: dict, where: str) -> None:
    np.testing.assert_allclose(got["losses"], ref["losses"], atol=TOL, err_msg=where)
    assert sorted(got["dense"]) == sorted(ref["dense"]) and got["dense"], where
    for k, v in ref["dense"].items():
        torch.testing.assert_close(got["dense"][k], v, atol=TOL, rtol=0, msg=f"{where} {k}")
    for name, (keys, vecs) in ref["tables"].items():
        gk, gv = got["tables"][name]
        order = np.argsort(gk)
        np.testing.assert_array_equal(np.asarray(gk)[order], keys, err_msg=f"{where} {name}")
        np.testing.assert_allclose(np.asarray(gv)[order], vecs, atol=TOL,
                                   err_msg=f"{where} {name}")


@pytest.mark.parametrize("opt, plan", [("sgd", "planner"), ("adam", "mixed")])
def test_two_ranks_equal_one_process(opt, plan):
    ref = train(0, 1, opt, plan)
    results = run_ranks(train, 2, opt, plan, timeout=300)
    for r, res in enumerate(results):
        assert_same(res["value"], ref, f"{opt}/{plan} rank {r}")
    torch.manual_seed(0)
    fresh = EmbeddingBagCollection(tables())  # the run's initial rows: training moved them
    assert not np.allclose(fresh.embedding_bags["t0"].weight.numpy(), ref["tables"]["t0"][1])


def test_needs_process_group():
    with pytest.raises(ConfigError, match="process group"):
        DistributedModelParallel(EmbeddingBagCollection(tables()))

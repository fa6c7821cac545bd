"""fused_optimizer state_dict round trip (train N, save, fresh model, load, train M == N+M
straight) on one process and at 2 gloo ranks under DistributedModelParallel; fused_params
(EmbOptimType) against apply_optimizer_in_backward; errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from terarec.errors import ConfigError, NotSupportedError
from terarec.torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagCollectionSharder,
    EmbOptimType,
    apply_optimizer_in_backward,
    fused_params_to_optimizer,
)
from tests.distributed.harness import run_ranks
from tests.torchrec.fused_worker import fused_params_run, resume
from tests.torchrec.test_ebc import tables

TOL = 1e-6


def assert_resumed(v: dict, where: str) -> None:
    np.testing.assert_allclose(v["losses"], v["ref_losses"], atol=TOL, rtol=0, err_msg=where)
    for name, rows in v["ref_rows"].items():
        np.testing.assert_allclose(v["rows"][name], rows, atol=TOL, rtol=0,
                                   err_msg=f"{where} {name}")
    assert sorted(v["dense"]) == sorted(v["ref_dense"]) and v["dense"], where
    for k, t in v["ref_dense"].items():
        torch.testing.assert_close(v["dense"][k], t, atol=TOL, rtol=0, msg=f"{where} {k}")


def rows_differ(v: dict) -> float:
    return max(float(np.abs(v["rows"][n] - r).max()) for n, r in v["ref_rows"].items())


@pytest.mark.parametrize("opt", ["adagrad", "adam", "momentum"])
def test_resume_one_process_equals_straight(opt, tmp_path):
    v = resume(0, 1, opt, str(tmp_path))
    assert_resumed(v, opt)
    n_states = {"adagrad": 1, "adam": 2, "momentum": 1}[opt]
    want = sorted([f"t0.momentum{i + 1}" for i in range(n_states)] + ["t0.step"])
    assert v["state_keys"]["embedding_bags.t0.weight"] == want
    # without the optimizer state the resumed run drifts: the test can tell
    assert rows_differ(resume(0, 1, opt, str(tmp_path), load_optimizer=False)) > 1e-4


@pytest.mark.parametrize("opt", ["adagrad", "adam"])
def test_resume_two_ranks_equals_straight(opt, tmp_path):
    for r, res in enumerate(run_ranks(resume, 2, opt, str(tmp_path), timeout=300)):
        v = res["value"]
        assert_resumed(v, f"{opt} rank {r}")
        keys = v["state_keys"]
        states = [f"momentum{i + 1}" for i in range(2 if opt == "adam" else 1)]
        assert keys["inner.sparse.embedding_bags.t0.weight"] == \
            sorted(f"t0.{s}" for s in ["ids", "step", *states])  # row-wise: both ranks
        assert bool(keys["inner.sparse.embedding_bags.t1.weight"]) == (r == 1)  # table-wise [1]


def test_state_dict_layout_and_lr_via_param_groups():
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables())
    assert ebc.fused_optimizer.keys() == []  # no optimizer applied: tables not trained
    apply_optimizer_in_backward(torch.optim.Adam, ebc.parameters(), {"lr": 0.01})
    fo = ebc.fused_optimizer
    assert fo is ebc.fused_optimizer  # kept while the optimizers stay the same
    sd = fo.state_dict()
    st = sd["state"]["embedding_bags.t1.weight"]
    assert st["t1.momentum1"].shape == (20, 3) and int(st["t1.step"]) == 0
    assert sd["param_groups"][1] == {"params": ["embedding_bags.t1.weight"], "lr": 0.01,
                                     "optimizer": "Adam"}
    fo.param_groups[1]["lr"] = 0.5
    fo.step()
    assert ebc.embedding_bags["t1"].table.optimizer.lr == 0.5
    assert ebc.embedding_bags["t0"].table.optimizer.lr == 0.01
    sd["param_groups"][0]["lr"] = 0.25
    fo.load_state_dict(sd)
    assert ebc.embedding_bags["t0"].table.optimizer.lr == 0.25


def test_load_state_dict_errors():
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables(), fused_params={"optimizer": EmbOptimType.ADAM})
    sd = ebc.fused_optimizer.state_dict()
    bad = copy.deepcopy(sd)
    del bad["state"]["embedding_bags.t2.weight"]
    with pytest.raises(ConfigError, match=r"missing \['embedding_bags.t2.weight'\]"):
        ebc.fused_optimizer.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["state"]["embedding_bags.t0.weight"]["t0.momentum2"] = torch.zeros(3, 4)
    with pytest.raises(ConfigError, match=r"t0.momentum2.*\(50, 4\)"):
        ebc.fused_optimizer.load_state_dict(bad)
    other = EmbeddingBagCollection(tables(), fused_params={
        "optimizer": EmbOptimType.EXACT_ADAGRAD})
    with pytest.raises(ConfigError, match="AdaGrad"):
        other.fused_optimizer.load_state_dict(sd)


@pytest.mark.parametrize("kind", ["adagrad", "adam", "sgd"])
def test_fused_params_equal_apply_optimizer_in_backward(kind):
    v = fused_params_run(0, 1, kind)
    assert v["fused"]["losses"] == v["apply"]["losses"]
    for name, rows in v["apply"]["rows"].items():
        np.testing.assert_array_equal(v["fused"]["rows"][name], rows, err_msg=name)


def test_fused_params_two_ranks_equal_apply_optimizer_in_backward():
    for res in run_ranks(fused_params_run, 2, "adagrad", timeout=300):
        v = res["value"]
        assert v["fused"]["losses"] == v["apply"]["losses"]
        for name, rows in v["apply"]["rows"].items():
            np.testing.assert_array_equal(v["fused"]["rows"][name], rows, err_msg=name)


def test_fused_params_translation_and_errors():
    assert fused_params_to_optimizer({"optimizer": "exact_adagrad", "learning_rate": 0.05}) == \
        (torch.optim.Adagrad, {"lr": 0.05, "eps": 1e-8})
    assert fused_params_to_optimizer({"optimizer": EmbOptimType.SGD}) == \
        (torch.optim.SGD, {"lr": 0.01})
    with pytest.raises(NotSupportedError, match="ROWWISE_ADAGRAD.*EXACT_ADAGRAD"):
        fused_params_to_optimizer({"optimizer": EmbOptimType.ROWWISE_ADAGRAD})
    with pytest.raises(NotSupportedError, match="cache_load_factor"):
        fused_params_to_optimizer({"optimizer": EmbOptimType.ADAM, "cache_load_factor": 0.2})
    with pytest.raises(NotSupportedError, match="weight_decay"):
        fused_params_to_optimizer({"optimizer": EmbOptimType.ADAM, "weight_decay": 0.1})
    with pytest.raises(ConfigError, match="optimizer"):
        fused_params_to_optimizer({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="EmbOptimType"):
        EmbeddingBagCollectionSharder({"optimizer": "bogus"})

"""TrainPipelineSparseDist: its losses and tables equal a plain loop over the same batches
(one process, and 2 gloo ranks with the next batch's key exchange issued ahead)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from terarec.errors import ConfigError
from terarec.torchrec import TrainPipelineSparseDist
from tests.distributed.harness import run_ranks
from tests.torchrec.fused_worker import batches, pipeline_run

TOL = 1e-6


def assert_same(v: dict, where: str) -> None:
    assert v["calls"] == len(v["ref"]), where
    np.testing.assert_allclose(v["losses"], v["ref"], atol=TOL, rtol=0, err_msg=where)
    for name, rows in v["ref_rows"].items():
        np.testing.assert_allclose(v["rows"][name], rows, atol=TOL, rtol=0,
                                   err_msg=f"{where} {name}")


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
def test_pipeline_one_process_equals_plain_loop(opt):
    v = pipeline_run(0, 1, opt)
    assert_same(v, opt)
    assert v["issued_ahead"] == 0  # nothing sharded: a plain copy-ahead


def test_pipeline_two_ranks_equals_plain_loop_with_overlap():
    for r, res in enumerate(run_ranks(pipeline_run, 2, "adam", timeout=300)):
        v = res["value"]
        assert_same(v, f"rank {r}")
        assert v["overlap_active"] and v["issued_ahead"] == len(v["ref"]) - 1, v


class _Bare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, batch):  # noqa: ANN001, ANN201
        return self.lin(batch[1].unsqueeze(1))


def test_pipeline_end_and_errors():
    model = _Bare()
    pipe = TrainPipelineSparseDist(model, torch.optim.SGD(model.parameters(), lr=0.1), "cpu")
    with pytest.raises(StopIteration):
        pipe.progress(iter([]))
    with pytest.raises(ConfigError, match=r"\(losses, output\)"):
        pipe.progress(iter(batches(1, 0, 1)))
    with pytest.raises(ConfigError, match="nn.Module"):
        TrainPipelineSparseDist(lambda b: b, None, "cpu")  # type: ignore[arg-type]

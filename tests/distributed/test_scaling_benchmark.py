"""``benchmarks/scaling.py`` builds and times both systems (one process, toy sizes): the Kaggle
DLRM with the planner's plan and the plain PyTorch peer, and the Criteo 1TB tables row-wise."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling_bench", ROOT / "benchmarks/scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def args(**kw) -> argparse.Namespace:
    a = argparse.Namespace(batch=32, max_rows=200, dim=8, steps=2, warmup=1, index="direct",
                           criteo_1tb=False, peer=True, bottom=[16, 8], top=[16, 1], tiny=True,
                           plan="slot_wise", profile=0)
    vars(a).update(kw)
    return a


def test_kaggle_dlrm_both_systems(scaling):
    res = scaling._measure(args(), 0, 1, torch.device("cpu"))
    assert res["tables"] == "kaggle" and res["world"] == 1
    assert res["terarec"] > 0 and res["torch"] > 0
    assert sum(scaling.CRITEO_1TB) == 204_184_588  # performance_anchors.md 2.1
    assert sum(scaling.CRITEO_1TB) * 128 * 4 == pytest.approx(104.5e9, rel=1e-3)


def test_criteo_1tb_tables_row_wise_hash_index(scaling, capsys):
    res = scaling._measure(args(criteo_1tb=True, peer=False, index="hash"), 0, 1,
                           torch.device("cpu"))
    assert res["tables"] == "criteo_1tb" and res["torch"] is None and res["terarec"] > 0
    assert "row_wise" in capsys.readouterr().out


def test_world_of_one_under_torchrun_is_the_one_process_path(scaling, monkeypatch, tmp_path):
    """torchrun --nproc-per-node 1 (WORLD_SIZE=1, a world-1 group, a multi-GPU vvgpu): no
    re-launch, no distributed hooks, so the fast path and the CUDA graphs stay available."""
    import torch.distributed as dist

    from terarec.distributed.launch import launch_if_needed

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TERAREC_LAUNCH_CPU", "1")  # would re-launch if WORLD_SIZE were ignored
    assert launch_if_needed([[0, 1]]).world_size == 1
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        model = scaling.build_model(args(), 1, torch.device("cpu"), [50] * 26)
        e = model.engine
        assert model._dist is None and e.grad_sync is None and e.loss_sync is None
        assert "embed" not in vars(e)
        assert type(e.tables["emb"]).__name__ == "EmbeddingTable"
    finally:
        dist.destroy_process_group()

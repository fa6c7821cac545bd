"""Planner (fits, balances, prints, explains what is missing, JSON), launcher fallback, and a
failing rank turning into errors on every rank instead of a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from terarec.distributed import planner
from terarec.distributed.launch import launch_if_needed
from terarec.embedding.config import TableConfig
from terarec.embedding.plan import ShardingPlan, TablePlacement, table_bytes
from terarec.errors import ConfigError
from terarec.optim.config import OptimizerConfig
from tests.distributed.harness import run_ranks
from tests.distributed.workers import failing

ADAM = OptimizerConfig(type="Adam")


def tables(rows: list[int]) -> list[TableConfig]:
    return [TableConfig(f"t{i}", "x", dim=16, slot_num=1, max_vocabulary_size=r, optimizer=ADAM)
            for i, r in enumerate(rows)]


def test_planner_replicates_small_and_balances_the_rest():
    ts = tables([50, 100_000, 100_000, 100_000, 100_000, 30])
    pc = planner.PlannerConfig(4, 1 << 30, batch_per_rank=256)
    plan = planner.propose(ts, pc)
    assert plan["t0"].kind == plan["t5"].kind == "replicated"
    ranks = sorted(plan[f"t{i}"].ranks[0] for i in range(1, 5))
    assert [plan[f"t{i}"].kind for i in range(1, 5)] == ["table_wise"] * 4
    assert ranks == [0, 1, 2, 3]  # one big table per GPU: lookups balanced
    used = planner.bytes_per_rank(ts, plan, 4)
    assert max(used.values()) <= pc.device_memory


def test_planner_splits_tables_too_big_for_one_gpu_and_prints_before_allocating():
    ts = tables([4_000_000, 10_000])
    pc = planner.PlannerConfig(2, 400 << 20, local_world_size=2, batch_per_rank=64)
    plan = planner.propose(ts, pc)
    assert plan["t0"].kind == "row_wise" and plan["t0"].ranks == [0, 1]
    text = planner.describe_plan(ts, plan, pc)
    assert "t0" in text and "row_wise" in text and "GPU rank 1 (host 0)" in text
    assert f"{table_bytes(ts[0]):,}" in text and "host 0:" in text


def test_impossible_plan_says_how_many_bytes_are_missing_and_where():
    ts = tables([4_000_000])
    pc = planner.PlannerConfig(2, 100 << 20)
    need = -(-table_bytes(ts[0]) // 2)
    with pytest.raises(ConfigError) as err:
        planner.propose(ts, pc)
    msg = str(err.value)
    assert f"{need - (100 << 20):,} bytes missing" in msg and "rank 0" in msg and "t0" in msg


def test_plan_json_round_trip_and_hand_written_plan_is_checked(tmp_path):
    ts = tables([1000, 2000])
    plan = planner.hugectr_plan(ts, 2)
    planner.save_plan(plan, tmp_path / "plan.json")
    back = planner.load_plan(tmp_path / "plan.json", ts, 2)
    assert back.to_json() == plan.to_json()
    bad = ShardingPlan({"t0": TablePlacement("table_wise", [3]),
                        "t1": TablePlacement("row_wise", [0, 1])})
    (tmp_path / "bad.json").write_text(bad.to_json())
    with pytest.raises(ConfigError, match="world size 2"):
        planner.load_plan(tmp_path / "bad.json", ts, 2)
    with pytest.raises(ConfigError, match="placement for table 't1'"):
        (tmp_path / "missing.json").write_text('{"t0": {"kind": "replicated", "ranks": [0, 1]}}')
        planner.load_plan(tmp_path / "missing.json", ts, 2)


def test_launch_falls_back_to_one_process_without_enough_gpus(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("TERAREC_LAUNCH_CPU", raising=False)
    denv = launch_if_needed([[0, 1]])
    assert denv.world_size == 1
    assert "names 2 GPUs but this machine has" in capsys.readouterr().out


def test_launch_re_executes_the_script_once_per_gpu(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import torch, torch.distributed as dist
        from terarec.distributed.launch import launch_if_needed
        e = launch_if_needed([[0, 1]])
        t = torch.tensor([e.rank + 1.0])
        dist.all_reduce(t)
        print(f"rank {e.rank} of {e.world_size}: sum {int(t)}", flush=True)
        dist.destroy_process_group()
    """))
    env = dict(os.environ, TERAREC_LAUNCH_CPU="1", PYTHONPATH=os.getcwd())
    env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rank 0 of 2: sum 3" in out.stdout and "rank 1 of 2: sum 3" in out.stdout


def test_a_failing_rank_is_an_error_on_every_rank_not_a_hang():
    res = run_ranks(failing, 2, timeout=60, dist_timeout=5, raise_errors=False)
    assert "boom on rank 1" in res[1]["error"]
    assert not res[0]["ok"], "rank 0 should fail in its collective, not succeed or hang"


def test_gloo_job_uses_cpu_tensors_on_a_machine_with_gpus(monkeypatch):
    import torch

    from terarec.distributed import env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert env.DistEnv(backend="gloo", local_rank=1).device == torch.device("cpu")
    assert env.DistEnv(backend="nccl", local_rank=1).device == torch.device("cuda", 1)
    assert env.default_backend() == "nccl"
    monkeypatch.setenv("TERAREC_DIST_BACKEND", "gloo")
    assert env.env_from_vars().device == torch.device("cpu")
    monkeypatch.setenv("TERAREC_DIST_BACKEND", "mpi")
    with pytest.raises(ConfigError, match="TERAREC_DIST_BACKEND"):
        env.default_backend()

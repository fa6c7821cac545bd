"""Jobs started by ``mpirun`` / ``srun`` (HugeCTR's multi-node launch): the launcher's variables
are read, the rendezvous comes from MASTER_ADDR/MASTER_PORT or an MPI broadcast, ``vvgpu`` is
checked against the number of processes, and the ranks train as one job (CPU, gloo).

mpirun itself is simulated: the tests start the processes with OpenMPI's variables set by hand.
mpi4py is not installed here; its broadcast is exercised through a fake ``COMM_WORLD``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from terarec.distributed import env
from terarec.distributed.env import MpiLaunch, mpi_launch, mpi_rendezvous
from terarec.distributed.launch import gpus_per_process, launch_if_needed
from terarec.errors import ConfigError
from tests.distributed import model_scenarios as ms
from tests.distributed.test_sharded_training import assert_same_model

REPO = Path(__file__).resolve().parents[2]
JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT")


# ---------------------------------------------------------------- launcher variables


@pytest.mark.parametrize(("variables", "expected"), [
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
     MpiLaunch("OpenMPI", 3, 8, 1, 2)),
    ({"PMI_RANK": "5", "PMI_SIZE": "6", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "3"},
     MpiLaunch("MPICH/Intel MPI", 5, 6, 2, 3)),
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, MpiLaunch("MPICH/Intel MPI", 1, 2, None, None)),
    ({"SLURM_PROCID": "4", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0"},
     MpiLaunch("Slurm srun", 4, 8, 0, None)),
    # OpenMPI started by srun: OpenMPI's own variables win
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "SLURM_PROCID": "0",
      "SLURM_NTASKS": "4", "SLURM_STEP_ID": "1"}, MpiLaunch("OpenMPI", 1, 2, None, None)),
    ({}, None),
    # the shell of an sbatch script (no srun step) is not a job of SLURM_NTASKS processes
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}, None),
])
def test_mpi_launch_reads_openmpi_mpich_and_slurm_variables(variables, expected):
    assert mpi_launch(variables) == expected


@pytest.mark.parametrize(("variables", "match"), [
    ({"PMIX_RANK": "0"}, "PMIx launch .PMIX_RANK=0.: expected the number of processes"),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "2"},
     r"0 <= OMPI_COMM_WORLD_RANK < OMPI_COMM_WORLD_SIZE. Received: \(2, 2\)"),
    ({"PMI_RANK": "one", "PMI_SIZE": "2"}, "PMI_RANK: expected an integer. Received: 'one'"),
])
def test_mpi_launch_rejects_incomplete_or_bad_variables(variables, match):
    with pytest.raises(ConfigError, match=match):
        mpi_launch(variables)


def test_vvgpu_must_match_one_process_per_node_or_per_gpu():
    two_nodes = [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert gpus_per_process(two_nodes, MpiLaunch("OpenMPI", 0, 2)) == 4  # mpirun -np <nodes>
    assert gpus_per_process(two_nodes, MpiLaunch("OpenMPI", 0, 8)) == 1  # mpirun -np <gpus>
    assert gpus_per_process([[0], [0]], MpiLaunch("OpenMPI", 0, 2)) == 1
    assert gpus_per_process(None, MpiLaunch("OpenMPI", 0, 1)) == 1
    with pytest.raises(ConfigError) as err:
        gpus_per_process(two_nodes, MpiLaunch("OpenMPI", 0, 4))
    msg = str(err.value)
    assert "mpirun -np 2" in msg and "mpirun -np 8" in msg and "Received: 4" in msg
    with pytest.raises(ConfigError, match="every node must name the same number of GPUs"):
        gpus_per_process([[0, 1], [0]], MpiLaunch("OpenMPI", 0, 2))


# ---------------------------------------------------------------- rendezvous


class FakeComm:
    """``MPI.COMM_WORLD`` as mpi_rendezvous uses it; rank 0 keeps what it sends, others
    receive ``sent_by_root``."""

    def __init__(self, rank: int, sent_by_root: Any = None) -> None:
        self.rank = rank
        self.sent_by_root = sent_by_root
        self.calls: list[tuple[Any, int]] = []

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's name
        return self.rank

    def bcast(self, obj: Any, root: int = 0) -> Any:
        self.calls.append((obj, root))
        return obj if self.rank == root else self.sent_by_root


@pytest.fixture
def no_job_variables(monkeypatch):
    for name in JOB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith(env.MPI_RANK_VARIABLE_PREFIXES):
            monkeypatch.delenv(name)


def test_rank_zero_broadcasts_its_host_and_a_free_port(no_job_variables):
    job = MpiLaunch("OpenMPI", 0, 2)
    root = FakeComm(0)
    host, port = mpi_rendezvous(job, root)
    assert host == socket.gethostname() and 0 < port < 65536
    assert root.calls == [((host, port), 0)]
    other = FakeComm(1, sent_by_root=("node0", 29555))
    assert mpi_rendezvous(MpiLaunch("OpenMPI", 1, 2), other) == ("node0", 29555)
    assert other.calls == [(None, 0)]


def test_master_addr_and_port_from_the_environment_need_no_mpi(no_job_variables, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "head")
    monkeypatch.setenv("MASTER_PORT", "29400")
    comm = FakeComm(0)
    assert mpi_rendezvous(MpiLaunch("OpenMPI", 0, 2), comm) == ("head", 29400)
    assert comm.calls == []
    monkeypatch.delenv("MASTER_PORT")  # only the port is missing: rank 0 picks one on "head"
    host, port = mpi_rendezvous(MpiLaunch("OpenMPI", 0, 2), comm)
    assert host == "head" and 0 < port < 65536 and comm.calls == [(("head", port), 0)]
    monkeypatch.setenv("MASTER_PORT", "http")
    with pytest.raises(ConfigError, match="MASTER_PORT: expected a TCP port"):
        mpi_rendezvous(MpiLaunch("OpenMPI", 0, 2), comm)


def test_without_master_addr_or_mpi4py_the_error_says_what_to_do(no_job_variables, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails even where it is installed
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as err:
        launch_if_needed([[0], [0]])
    msg = str(err.value)
    assert "OpenMPI launch of 2 processes" in msg and "MASTER_ADDR / MASTER_PORT" in msg
    assert "pip install 'terarec[mpi]'" in msg and "mpi4py not importable" in msg
    assert not env.is_initialized()


def test_a_plain_run_never_imports_mpi4py(no_job_variables, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert launch_if_needed([[0]]).world_size == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")  # mpirun -np 1: a plain run too
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert launch_if_needed([[0]]).world_size == 1


# ---------------------------------------------------------------- simulated mpirun


def mpirun(script: Path, nprocs: int, *args: str, extra: dict[str, str] | None = None,
           timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Start ``nprocs`` processes of ``script`` as ``mpirun -np nprocs`` would on one host
    (OpenMPI's variables), with MASTER_ADDR/MASTER_PORT set; returns each one's result."""
    base = {k: v for k, v in os.environ.items()
            if k not in JOB_VARIABLES and not k.startswith(env.MPI_RANK_VARIABLE_PREFIXES)}
    base.update(PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(env.free_port()),
                OMP_NUM_THREADS="1", TERAREC_DIST_TIMEOUT="60", **(extra or {}))
    procs = []
    for r in range(nprocs):
        ranks = {"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": str(nprocs),
                 "OMPI_COMM_WORLD_LOCAL_RANK": str(r), "OMPI_COMM_WORLD_LOCAL_SIZE": str(nprocs)}
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=dict(base, **ranks),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


TRAIN_SCRIPT = """
    import functools, json, sys
    import torch
    from terarec.distributed import env
    from tests.distributed import model_scenarios as ms
    from tests.helpers import models

    data = json.load(open(sys.argv[1]))
    # the facade's DCN, built by a HugeCTR script naming 2 nodes of one GPU each
    ms.build_dcn = functools.partial(models.build_dcn, vvgpu=[[0], [0]])
    res = ms.run(0, 2, data, "dist", sys.argv[2], None)
    res["backend"] = env.current().backend
    torch.save(res, f"{sys.argv[3]}/rank{res['rank']}.pt")
    env.shutdown()
"""


def test_two_mpi_processes_train_as_one_job(data, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN_SCRIPT))
    (tmp_path / "data.json").write_text(json.dumps(data))
    runs = mpirun(script, 2, str(tmp_path / "data.json"), str(tmp_path / "snap"), str(tmp_path))
    for r, run in enumerate(runs):
        assert run.returncode == 0, f"process {r}:\n{run.stdout}\n{run.stderr}"
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [(g["rank"], g["world"], g["backend"]) for g in got] == [(0, 2, "gloo"), (1, 2, "gloo")]
    ref = ms.run(0, 1, data, "dist", str(tmp_path / "one"), None)
    for r, g in enumerate(got):
        assert_same_model(g, ref, f"mpi rank {r}")
    # one set of HugeCTR snapshot files, written by rank 0, as a one-process run writes
    ours = sorted(p.name for p in tmp_path.glob("snap*") if "shards" not in p.name)
    theirs = sorted(p.name.replace("one", "snap", 1) for p in tmp_path.glob("one*"))
    assert ours and ours == theirs
    a = (tmp_path / "snap_dense_6.model").read_bytes()
    b = (tmp_path / "one_dense_6.model").read_bytes()
    np.testing.assert_allclose(np.frombuffer(a, np.float32), np.frombuffer(b, np.float32),
                               atol=1e-5)


WORKER_SCRIPT = """
    import os
    import torch, torch.distributed as dist
    from terarec.distributed.launch import launch_if_needed
    e = launch_if_needed([[0, 1], [0, 1]])
    t = torch.tensor([e.rank + 1.0])
    dist.all_reduce(t)
    mpi = os.environ.get("OMPI_COMM_WORLD_RANK", "-")
    print(f"rank {e.rank} of {e.world_size} local {e.local_rank}/{e.local_world_size} "
          f"mpi {mpi}: sum {int(t)}", flush=True)
    dist.destroy_process_group()
"""


def test_one_process_per_node_starts_the_node_workers(tmp_path):
    """HugeCTR's mpirun -np <nodes>: 2 MPI processes x 2 GPUs per node = 4 ranks; the
    workers are not MPI ranks (no OpenMPI variables)."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(WORKER_SCRIPT))
    runs = mpirun(script, 2, extra={"TERAREC_LAUNCH_CPU": "1"})
    for r, run in enumerate(runs):
        assert run.returncode == 0, f"process {r}:\n{run.stdout}\n{run.stderr}"
    lines = {line for run in runs for line in run.stdout.splitlines() if line.startswith("rank")}
    assert lines == {"rank 0 of 4 local 0/2 mpi 0: sum 10", "rank 1 of 4 local 1/2 mpi -: sum 10",
                     "rank 2 of 4 local 0/2 mpi 1: sum 10", "rank 3 of 4 local 1/2 mpi -: sum 10"}

"""Start one process per GPU named by ``vvgpu`` when a HugeCTR script runs under plain python.

:func:`launch_if_needed` is called by ``hugectr.Model(...)``:

* Already inside a job (``WORLD_SIZE`` set by torchrun or by this launcher, 1 included):
  initialise the process group from the environment (none for a world of one) and return.
* ``vvgpu`` names one GPU, or ``TERAREC_LAUNCH=0``: one process, nothing to do.
* ``vvgpu`` names N > 1 GPUs but this machine has fewer CUDA devices: one process trains the
  global batch on one device, and a log line says so.
* Otherwise the current process becomes rank 0 and re-executes the same command line
  (``sys.executable sys.argv``) N-1 times with torchrun's variables (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``), so the
  children run the script from the top and join at the same ``Model(...)`` call. Rank 0 waits
  for them at exit and exits non-zero if one failed. Work done before ``Model(...)`` runs in
  every process, exactly as under torchrun.
* Started by ``mpirun -np P`` / ``srun`` (:func:`terarec.distributed.env.mpi_launch`; P > 1):
  the rendezvous is ``MASTER_ADDR`` / ``MASTER_PORT`` when set, else rank 0's host and a free
  port broadcast with mpi4py (``terarec[mpi]``). ``vvgpu`` lists each node's GPUs, and P must
  be one of:

  - one process per GPU, ``P == sum(len(node) for node in vvgpu)``: each MPI process is one
    rank (local rank from the launcher, e.g. ``OMPI_COMM_WORLD_LOCAL_RANK``);
  - one process per node, ``P == len(vvgpu)`` (HugeCTR's ``mpirun -np <nodes>``), every node
    naming G GPUs: each MPI process becomes local rank 0 of its node (global rank
    ``mpi_rank * G``) and starts G - 1 workers as above, ranks ``mpi_rank * G + 1..``. The
    workers run without the MPI variables, so they are not MPI ranks: an ``import mpi4py`` in
    them makes a job of one, and the script's own MPI calls (``comm.Barrier()``) involve the
    node processes only. With fewer CUDA devices than G (and no ``TERAREC_LAUNCH_CPU``), or
    ``TERAREC_LAUNCH=0``, each node trains in its one process instead (a log line says so).

  Any other P is a ConfigError naming both ``mpirun -np`` values. Then the process group is
  formed from torchrun's variables, as in the first case; a job of one MPI process is a plain
  ``python`` run.

``TERAREC_LAUNCH_CPU=1`` allows the re-execution on CPU-only machines (gloo; used by tests).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

import torch

from terarec.distributed import env
from terarec.distributed.env import DistEnv, MpiLaunch
from terarec.errors import ConfigError


def _log(message: str) -> None:
    print(f"[HCTR][terarec.distributed][INFO][RK0][main]: {message}", flush=True)


def gpus_named(vvgpu: list[list[int]] | None) -> int:
    """Number of GPUs ``vvgpu`` names on this node (``[[0, 1, 2, 3]]`` -> 4)."""
    if not vvgpu:
        return 1
    return max(1, len(vvgpu[0]))


def launch_if_needed(vvgpu: list[list[int]] | None) -> DistEnv:
    """Make sure there is one process per named GPU (see module docstring); returns this
    process's :class:`DistEnv` (``world_size == 1`` for a single process)."""
    if os.environ.get("WORLD_SIZE") not in (None, ""):
        # inside a launcher's job (torchrun, this module): its WORLD_SIZE rules, even 1 with a
        # multi-GPU vvgpu (never re-launched; a world of one is the one-process path)
        return env.init_from_env()
    if env.is_initialized():
        return env.current()
    mpi = env.mpi_launch()
    if mpi is not None and mpi.world_size > 1:
        return _join_mpi(vvgpu, mpi)
    if vvgpu and len(vvgpu) > 1:
        _log(f"vvgpu names {len(vvgpu)} nodes; start one process per node with mpirun "
             "(-np <nodes>) or per GPU with torchrun (--nnodes) on each node. Running one "
             "process now.")
        return DistEnv()
    n = gpus_named(vvgpu)
    if n <= 1 or _workers_here(n) < n:
        return DistEnv()
    return _spawn(n)


def _workers_here(n: int) -> int:
    """How many processes this node runs for the ``n`` GPUs vvgpu names on it: ``n``, or 1
    (with a log line) when ``TERAREC_LAUNCH=0`` or the node has fewer CUDA devices."""
    if n <= 1 or os.environ.get("TERAREC_LAUNCH", "1") == "0":
        return 1
    cpu_ok = os.environ.get("TERAREC_LAUNCH_CPU") == "1"
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < n and not cpu_ok:
        _log(f"vvgpu names {n} GPUs but this machine has {have}; training the global batch in "
             "one process on one device instead")
        return 1
    return n


def gpus_per_process(vvgpu: list[list[int]] | None, mpi: MpiLaunch) -> int:
    """GPUs each process of an MPI job of ``mpi.world_size`` processes drives: 1 with one
    process per GPU, a node's G GPUs with one process per node (see module docstring)."""
    nodes = vvgpu or [[0]]
    counts = [max(1, len(node)) for node in nodes]
    total, procs = sum(counts), mpi.world_size
    if procs == total:
        return 1
    if procs == len(nodes) and len(set(counts)) == 1:
        return counts[0]
    hint = ("; with one process per node every node must name the same number of GPUs"
            if procs == len(nodes) else "")
    raise ConfigError(
        f"CreateSolver(vvgpu={vvgpu}) under {mpi.launcher} with {procs} processes",
        f"one process per node (mpirun -np {len(nodes)}) or one per GPU (mpirun -np {total})"
        + hint, procs)


def _join_mpi(vvgpu: list[list[int]] | None, mpi: MpiLaunch) -> DistEnv:
    """Form the process group of an MPI / srun job (see module docstring)."""
    per = gpus_per_process(vvgpu, mpi)
    addr, port = env.mpi_rendezvous(mpi)
    if per == 1:
        local_world = mpi.local_world_size or gpus_named(vvgpu)
        local_rank = mpi.local_rank if mpi.local_rank is not None else mpi.rank % local_world
        _set_job_vars(mpi.rank, mpi.world_size, local_rank, local_world, addr, port)
        if mpi.rank == 0:
            _log(f"{mpi.launcher} job: {mpi.world_size} processes, one per GPU; "
                 f"rendezvous {addr}:{port}")
        return env.init_from_env()
    n = _workers_here(per)
    if mpi.rank == 0:
        _log(f"{mpi.launcher} job: {mpi.world_size} processes, one per node, each running {n} "
             f"of its node's {per} GPUs; rendezvous {addr}:{port}")
    return _spawn(n, first_rank=mpi.rank * n, world=mpi.world_size * n, addr=addr, port=port)


def _set_job_vars(rank: int, world: int, local_rank: int, local_world: int, addr: str,
                  port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(local_world), MASTER_ADDR=addr, MASTER_PORT=str(port))


def _without_mpi_variables(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` less what makes a process an MPI rank (for workers an MPI process starts)."""
    return {k: v for k, v in environ.items()
            if not k.startswith(env.MPI_RANK_VARIABLE_PREFIXES)}


def _spawn(n: int, first_rank: int = 0, world: int | None = None, addr: str = "127.0.0.1",
           port: int | None = None) -> DistEnv:
    """This process becomes rank ``first_rank`` (local rank 0) of a job of ``world`` (default
    ``n``) processes and starts local ranks 1..n-1 (global ``first_rank + 1..``)."""
    world = n if world is None else world
    port = env.free_port() if port is None else port
    base = _without_mpi_variables(dict(os.environ))
    children = []
    for r in range(1, n):
        child_env = dict(base, RANK=str(first_rank + r), WORLD_SIZE=str(world),
                         LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(n), MASTER_ADDR=addr,
                         MASTER_PORT=str(port))
        children.append(subprocess.Popen([sys.executable, *sys.argv], env=child_env))
    _set_job_vars(first_rank, world, 0, n, addr, port)
    if children:
        atexit.register(_wait_children, children, first_rank)
        _log(f"started {n - 1} more processes (ranks {first_rank + 1}..{first_rank + n - 1}) "
             f"for the {n} GPUs of vvgpu")
    return env.init_from_env()


def _wait_children(children: list[subprocess.Popen], first_rank: int = 0) -> None:
    failed = []
    for r, p in enumerate(children, start=first_rank + 1):
        code = p.wait()
        if code != 0:
            failed.append((r, code))
    if failed:
        _log(f"ranks exited with errors: {failed}")
        os._exit(1)

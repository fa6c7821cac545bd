"""Process-group setup from torchrun-style environment variables, and small helpers.

``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` say who this process is (torchrun, ``python -m torch.distributed.run``, or
:func:`terarec.distributed.launch.launch_if_needed` set them). The backend is NCCL when CUDA
is available and gloo otherwise (``TERAREC_DIST_BACKEND=gloo|nccl`` forces one); each NCCL
process uses the GPU of its local rank, and a gloo job uses CPU tensors even on a machine with
GPUs (:attr:`DistEnv.device`; gloo has no all-to-all of CUDA tensors). The collective
timeout comes from ``TERAREC_DIST_TIMEOUT`` (seconds, default 1800) so that a rank that died
turns into an error on the others instead of a hang.

``TERAREC_EXCHANGE_AT_ONE_RANK=1`` (with ``WORLD_SIZE=1`` from torchrun): a job of one process
still builds its process group and runs the sharded path (input_dist, lookup, output_dist,
collectives with itself) instead of the one-process shortcut: what a multi-GPU step costs on
one GPU apart from the link (profiling, and the NCCL code paths on a one-GPU machine).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import torch
import torch.distributed as dist

from terarec.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Who this process is in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = "gloo"

    @property
    def device(self) -> torch.device:
        # gloo cannot run every collective on CUDA tensors (all_to_all): a gloo job is a CPU job.
        if self.backend == "gloo":
            return torch.device("cpu")
        return device_for(self.local_rank)

    @property
    def num_hosts(self) -> int:
        return max(1, -(-self.world_size // max(self.local_world_size, 1)))


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}", "an integer", raw) from None


EXCHANGE_AT_ONE_RANK_ENV = "TERAREC_EXCHANGE_AT_ONE_RANK"


def exchange_at_one_rank() -> bool:
    """Whether a world of one runs the sharded path (see module docstring)."""
    return os.environ.get(EXCHANGE_AT_ONE_RANK_ENV, "0").strip() not in ("", "0")


def env_from_vars() -> DistEnv:
    """The job description in the environment (a single process when nothing is set)."""
    world = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local_rank = _int_env("LOCAL_RANK", rank)
    local_world = _int_env("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError("RANK / WORLD_SIZE", "0 <= RANK < WORLD_SIZE", (rank, world))
    return DistEnv(rank, world, local_rank, local_world, default_backend())


def default_backend() -> str:
    """``TERAREC_DIST_BACKEND`` when set, else NCCL with CUDA and gloo without."""
    forced = os.environ.get("TERAREC_DIST_BACKEND", "").strip().lower()
    if forced:
        if forced not in ("gloo", "nccl"):
            raise ConfigError("environment variable TERAREC_DIST_BACKEND", '"gloo" or "nccl"',
                              forced)
        return forced
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_for(local_rank: int) -> torch.device:
    """The GPU of ``local_rank`` (CPU when CUDA is absent)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("TERAREC_DIST_TIMEOUT", "1800")))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def current() -> DistEnv:
    """The running job (from the initialised process group, else from the environment)."""
    if not is_initialized():
        return env_from_vars()
    base = env_from_vars()
    world, rank = dist.get_world_size(), dist.get_rank()
    local_world = base.local_world_size if base.world_size == world else world
    local_rank = base.local_rank if base.world_size == world else rank
    return DistEnv(rank, world, local_rank, local_world, dist.get_backend())


def init_from_env(backend: str | None = None) -> DistEnv:
    """Initialise the default process group from the environment when ``WORLD_SIZE > 1``
    (a no-op when it already exists or the job has one process, unless
    ``TERAREC_EXCHANGE_AT_ONE_RANK`` asks for the sharded path at one rank)."""
    env = env_from_vars()
    if is_initialized() or (env.world_size == 1 and not exchange_at_one_rank()):
        return current()
    backend = backend or env.backend
    if backend == "nccl":
        torch.cuda.set_device(env.device)
    dist.init_process_group(backend, init_method="env://", rank=env.rank,
                            world_size=env.world_size, timeout=timeout())
    return current()


def init_process_group(rank: int, world_size: int, init_method: str,
                       backend: str | None = None) -> DistEnv:
    """Explicit initialisation (tests, notebooks): ``init_method`` is ``tcp://host:port`` or
    ``file:///path``."""
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(device_for(rank))
    dist.init_process_group(backend, init_method=init_method, rank=rank,
                            world_size=world_size, timeout=timeout())
    return current()


@dataclass(frozen=True)
class MpiLaunch:
    """Who this process is in a job started by an MPI launcher or ``srun`` (local values are
    None when the launcher does not say)."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int | None = None
    local_world_size: int | None = None


# launcher name, rank, size, local rank, local size, a variable that must also be set
_MPI_VARIABLES: tuple[tuple[str, str, str | None, str | None, str | None, str | None], ...] = (
    ("OpenMPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE", None),
    ("MPICH/Intel MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", None),
    # SLURM_PROCID / SLURM_NTASKS are also set in an sbatch script's own shell: only a step
    # started by srun (SLURM_STEP_ID) is a job of SLURM_NTASKS processes
    ("Slurm srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
     "SLURM_STEP_ID"),
    ("PMIx", "PMIX_RANK", None, None, None, None),
)

# what makes a process an MPI rank: removed from the environment of the workers an MPI
# process starts itself (they are not ranks of the MPI job; see launch.py)
MPI_RANK_VARIABLE_PREFIXES = ("OMPI_", "PMIX_", "PMI_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
                              "HYDI_", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_ID",
                              "SLURM_STEPID")


def _int_var(environ: Mapping[str, str], name: str | None) -> int | None:
    raw = environ.get(name, "") if name else ""
    if raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}", "an integer", raw) from None


def mpi_launch(environ: Mapping[str, str] | None = None) -> MpiLaunch | None:
    """The MPI / srun job this process belongs to, from the launcher's variables (first match
    in the order OpenMPI, MPICH / Intel MPI, Slurm srun, PMIx); None when none is set."""
    environ = os.environ if environ is None else environ
    for launcher, rank_var, size_var, lrank_var, lsize_var, marker in _MPI_VARIABLES:
        rank = _int_var(environ, rank_var)
        if rank is None or (marker is not None and not environ.get(marker)):
            continue
        size = _int_var(environ, size_var)
        if size is None:
            raise ConfigError(f"{launcher} launch ({rank_var}={rank})",
                              f"the number of processes in {size_var or 'a size variable'}",
                              None, hint="Launch with mpirun (OpenMPI sets OMPI_COMM_WORLD_SIZE, "
                              "MPICH PMI_SIZE) or srun (SLURM_NTASKS), or use torchrun")
        if size < 1 or not 0 <= rank < size:
            raise ConfigError(f"{launcher} variables {rank_var} / {size_var}",
                              f"0 <= {rank_var} < {size_var}", (rank, size))
        return MpiLaunch(launcher, rank, size, _int_var(environ, lrank_var),
                         _int_var(environ, lsize_var))
    return None


class MpiComm(Protocol):
    """What :func:`mpi_rendezvous` uses of ``mpi4py.MPI.COMM_WORLD``."""

    def Get_rank(self) -> int: ...  # noqa: N802 - mpi4py's name

    def bcast(self, obj: Any, root: int = 0) -> Any: ...


def mpi_comm_world(launch: MpiLaunch) -> MpiComm:
    """``mpi4py.MPI.COMM_WORLD``; a ConfigError saying what to do when mpi4py is missing."""
    try:
        from mpi4py import MPI  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(
            f"{launch.launcher} launch of {launch.world_size} processes: environment variables "
            "MASTER_ADDR / MASTER_PORT",
            "both set (the host and a free TCP port of rank 0), or mpi4py installed so that "
            "rank 0 broadcasts them (pip install 'terarec[mpi]')",
            f"MASTER_ADDR={os.environ.get('MASTER_ADDR')!r}, "
            f"MASTER_PORT={os.environ.get('MASTER_PORT')!r}, mpi4py not importable ({exc})",
        ) from None
    return MPI.COMM_WORLD


def mpi_rendezvous(launch: MpiLaunch, comm: MpiComm | None = None) -> tuple[str, int]:
    """``(MASTER_ADDR, MASTER_PORT)`` of an MPI-launched job: the environment's when both are
    set; else rank 0 fills in what is missing (its host name, a free port on it) and
    broadcasts it over ``comm`` (``mpi4py``'s ``COMM_WORLD`` when None)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    if addr and port:
        return addr, _port(port)
    comm = comm if comm is not None else mpi_comm_world(launch)
    mine = None
    if comm.Get_rank() == 0:
        mine = (addr or socket.gethostname(), _port(port) if port else free_port(""))
    addr, got = comm.bcast(mine, root=0)
    return str(addr), int(got)


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError("environment variable MASTER_PORT", "a TCP port (1..65535)", raw)
    return port


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()

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
from dataclasses import dataclass
from datetime import timedelta

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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()

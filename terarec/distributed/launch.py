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
  every process, exactly as under torchrun. Multi-node jobs use torchrun (or SLURM setting the
  same variables).

``TERAREC_LAUNCH_CPU=1`` allows the re-execution on CPU-only machines (gloo; used by tests).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

import torch

from terarec.distributed import env
from terarec.distributed.env import DistEnv


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
    if vvgpu and len(vvgpu) > 1:
        _log(f"vvgpu names {len(vvgpu)} nodes; start one process per GPU with torchrun "
             "(--nnodes) on each node. Running one process now.")
        return DistEnv()
    n = gpus_named(vvgpu)
    if n <= 1 or os.environ.get("TERAREC_LAUNCH", "1") == "0":
        return DistEnv()
    cpu_ok = os.environ.get("TERAREC_LAUNCH_CPU") == "1"
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < n and not cpu_ok:
        _log(f"vvgpu names {n} GPUs but this machine has {have}; training the global batch in "
             "one process on one device instead")
        return DistEnv()
    return _spawn(n)


def _spawn(n: int) -> DistEnv:
    port = env.free_port()
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n))
    children = []
    for r in range(1, n):
        child_env = dict(base, RANK=str(r), LOCAL_RANK=str(r))
        children.append(subprocess.Popen([sys.executable, *sys.argv], env=child_env))
    os.environ.update({k: base[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE",
                                            "LOCAL_WORLD_SIZE")})
    os.environ.update(RANK="0", LOCAL_RANK="0")
    atexit.register(_wait_children, children)
    _log(f"started {n - 1} more processes (ranks 1..{n - 1}) for the {n} GPUs of vvgpu")
    return env.init_from_env()


def _wait_children(children: list[subprocess.Popen]) -> None:
    failed = []
    for r, p in enumerate(children, start=1):
        code = p.wait()
        if code != 0:
            failed.append((r, code))
    if failed:
        _log(f"ranks exited with errors: {failed}")
        os._exit(1)

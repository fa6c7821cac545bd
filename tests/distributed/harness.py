"""Run a function on N CPU processes joined by a gloo process group (FileStore init).

Each rank's return value (or its exception text) comes back to the parent through a file, so a
failing rank never hides the others' errors; the parent kills ranks that outlive ``timeout``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _entry(rank: int, world: int, init_file: str, out_dir: str, fn: Callable[..., Any],
           args: tuple, dist_timeout: float, backend: str) -> None:
    os.environ["TERAREC_DIST_TIMEOUT"] = str(dist_timeout)
    torch.set_num_threads(1)
    result: dict[str, Any]
    try:
        from terarec.distributed import env

        env.init_process_group(rank, world, f"file://{init_file}", backend=backend)
        result = {"ok": True, "value": fn(rank, world, *args)}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                  "trace": traceback.format_exc()}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    try:
        from terarec.distributed import env

        env.shutdown()
    except Exception:  # noqa: BLE001,S110 - best effort after a failure
        pass


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 120.0,
              dist_timeout: float = 60.0, raise_errors: bool = True,
              backend: str = "gloo") -> list[dict[str, Any]]:
    """Run ``fn(rank, world, *args)`` on ``world`` processes; returns each rank's result dict
    ``{"ok", "value" | "error"}``. Raises when a rank failed (``raise_errors``) or hung."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_entry, args=(r, world, init_file, tmp, fn, args,
                                                   dist_timeout, backend), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for r in hung:
            procs[r].kill()
            procs[r].join()
        if hung:
            raise AssertionError(f"ranks {hung} still running after {timeout}s")
        results = []
        for r in range(world):
            path = Path(tmp) / f"rank{r}.pt"
            if not path.exists():
                results.append({"ok": False, "error": f"rank {r} exited with code "
                                f"{procs[r].exitcode} and no result"})
            else:
                results.append(torch.load(path, weights_only=False))
    if raise_errors:
        bad = [(r, res.get("trace", res["error"])) for r, res in enumerate(results)
               if not res["ok"]]
        if bad:
            raise AssertionError("\n".join(f"rank {r}: {t}" for r, t in bad))
    return results

"""HugeCTR-style log lines (``[HCTR][hh:mm:ss.mmm][INFO][RK0][main]: ...``).

Existing log parsers written for HugeCTR keep working on terarec's output.
"""

from __future__ import annotations

import sys
import time


def log(message: str, rank: int = 0, level: str = "INFO", only_rank0: bool = True) -> None:
    if only_rank0 and rank != 0:
        return
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    print(f"[HCTR][{stamp}][{level}][RK{rank}][main]: {message}", file=sys.stdout, flush=True)

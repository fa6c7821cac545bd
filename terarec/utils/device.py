"""Device selection: CPU when no GPU is present, ``vvgpu`` GPU ids otherwise."""

from __future__ import annotations

import torch


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(vvgpu: list[list[int]] | None = None, local_rank: int = 0) -> torch.device:
    """Pick the device for this process.

    HugeCTR's ``vvgpu=[[0]]`` names GPU 0; on a machine without CUDA terarec runs the same
    script on the CPU.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    gpus = [g for node in (vvgpu or [[0]]) for g in node]
    gpu = gpus[local_rank % len(gpus)] if gpus else 0
    return torch.device("cuda", gpu)

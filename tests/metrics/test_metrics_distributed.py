"""Two gloo ranks (torch.multiprocessing.spawn) give the same metrics as one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from terarec.metrics import create_metrics

NAMES = ["AUC", "AverageLoss", "HitRate", "NDCG", "SMAPE"]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    p = torch.round(torch.rand(3000, generator=gen) * 50) / 50
    y = (torch.rand(3000, generator=gen) < p).float()
    return p, y


def _feed(metrics: dict, p: torch.Tensor, y: torch.Tensor) -> None:
    for i in range(0, p.shape[0], 256):
        pb, yb = p[i : i + 256], y[i : i + 256]
        for m in metrics.values():
            m.update(pb, yb, loss=float(pb.mean()))


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        p, y = _data()
        # Uneven split: rank 0 gets the first 1000 samples, rank 1 the other 2000.
        part = slice(0, 1000) if rank == 0 else slice(1000, None)
        metrics = create_metrics(dict.fromkeys(NAMES, 1.0))
        _feed(metrics, p[part], y[part])
        values = torch.tensor([metrics[n].compute() for n in NAMES], dtype=torch.float64)
        torch.save(values, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gloo_two_ranks_equal_single_process(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p, y = _data()
    single = create_metrics(dict.fromkeys(NAMES, 1.0))
    # Same batch boundaries as the ranks (AverageLoss depends on them).
    _feed({k: v for k, v in single.items() if k != "NDCG"}, p[:1000], y[:1000])
    _feed({k: v for k, v in single.items() if k != "NDCG"}, p[1000:], y[1000:])
    single["NDCG"].update(p, y)
    expected = [single[n].compute() for n in NAMES]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt").tolist()
        for name, g, e in zip(NAMES, got, expected):
            assert abs(g - e) < 1e-9, (rank, name, g, e)

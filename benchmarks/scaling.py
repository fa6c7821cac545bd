"""Weak scaling of DLRM (MLPerf v1 architecture) on 1/2/4 GPUs: terarec vs plain PyTorch.

Usage:
    python benchmarks/scaling.py --gpus 1,2                    # spawns 1 then 2 ranks (NCCL)
    torchrun --nproc-per-node 2 benchmarks/scaling.py          # one world size per launch
    torchrun --nproc-per-node 2 benchmarks/scaling.py --criteo-1tb   # 104.5 GB row-wise
    python benchmarks/scaling.py --tiny                        # CPU smoke run (gloo, 1 and 2 ranks)

Model: 13 dense features -> bottom MLP 512-256-128, 26 embedding tables (Criteo Kaggle
cardinalities, rows capped by ``--max-rows`` when > 0), dim 128, dot interaction, top MLP
1024-1024-512-256-1, BCE loss, SGD, batch 65,536 per GPU. Synthetic uniform keys. Tables are
HugeCTR's one-hot ``LocalizedSlotSparseEmbeddingOneHot`` (keys are row numbers: direct-mapped
shards, no hash; ``--index hash`` for hash tables). For each world size both systems run in the
same processes, one after the other, on the same batches:

* ``terarec``: :class:`ShardedEmbeddingCollection` with the planner's plan (one collective per
  phase for all tables, fused sparse update in the backward) + data-parallel dense (weighted
  all-reduce through ``DataParallel``).
* ``torch``: the peer written in plain PyTorch: DDP for the dense part and manual table-wise
  placement (table ``t`` on rank ``t mod N``, ``nn.EmbeddingBag`` over the global batch, pooled
  vectors redistributed with an autograd all-to-all, sparse SGD).

``--criteo-1tb``: the MLPerf DLRM-DCNv2 Criteo tables (performance_anchors.md 2.1: 26 tables,
204,184,588 rows = 104.5 GB fp32 at dim 128) row-wise over every rank (2 H200: 52 GB each), the
same DLRM dense part; terarec only (the peer would need 61 GB of table-wise tables on one GPU
plus its sparse gradients), reports samples/s.

Prints samples/s (global and per GPU) and weak-scaling efficiency
(throughput(N) / (N x throughput(1))) per system, and one JSON line per measurement. Under
torchrun each launch measures one world size; results are appended to ``--results`` (JSON
lines) and the table is printed over every result there with the same settings, so
``--nproc-per-node 1`` then ``2`` gives the efficiency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terarec.distributed import env as denv  # noqa: E402
from terarec.distributed.collection import ShardedEmbeddingCollection  # noqa: E402
from terarec.distributed.data_parallel import DataParallel  # noqa: E402
from terarec.distributed.planner import PlannerConfig, describe_plan, propose  # noqa: E402
from terarec.embedding.config import TableConfig  # noqa: E402
from terarec.embedding.plan import ShardingPlan, TablePlacement  # noqa: E402
from terarec.optim.config import OptimizerConfig  # noqa: E402
from terarec.sparse import SparseInput  # noqa: E402

#: MLPerf DLRM-DCNv2 Criteo 1TB tables (40M cap): 204,184,588 rows, 104.5 GB fp32 at dim 128.
CRITEO_1TB = [40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282,
              10, 2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108,
              36]
KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def mlp(sizes: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Dense(nn.Module):
    """Bottom MLP, dot interaction, top MLP."""

    def __init__(self, dim: int, bottom: list[int], top: list[int], n_tables: int) -> None:
        super().__init__()
        self.bottom = mlp([13, *bottom])
        n = n_tables + 1
        self.top = mlp([dim + n * (n - 1) // 2, *top], last_act=False)
        self.iu = torch.triu_indices(n, n, 1)

    def forward(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        feats = torch.cat([x.unsqueeze(1), emb], 1)
        inter = torch.bmm(feats, feats.transpose(1, 2))[:, self.iu[0], self.iu[1]]
        return self.top(torch.cat([x, inter], 1))


def make_batch(step: int, batch: int, rows: list[int], device: torch.device) -> tuple:
    g = torch.Generator().manual_seed(step)
    keys = torch.stack([torch.randint(0, r, (batch,), generator=g) for r in rows], 1)
    dense = torch.randn(batch, 13, generator=g)
    label = (torch.rand(batch, 1, generator=g) < 0.3).float()
    return keys.to(device), dense.to(device), label.to(device)


def table_configs(a: argparse.Namespace, rows: list[int]) -> list[TableConfig]:
    """One table per feature: one-hot direct-mapped (HugeCTR's MLPerf DLRM tables) or hash."""
    sgd = OptimizerConfig(type="SGD")
    if a.index == "direct":
        return [TableConfig(f"t{i}", f"s{i}", dim=a.dim, slot_num=1, max_vocabulary_size=r,
                            slot_size_array=[r], embedding_type="LocalizedSlotSparseEmbeddingOneHot",
                            optimizer=sgd) for i, r in enumerate(rows)]
    return [TableConfig(f"t{i}", f"s{i}", dim=a.dim, slot_num=1, max_vocabulary_size=r,
                        optimizer=sgd) for i, r in enumerate(rows)]


def run_terarec(a: argparse.Namespace, rank: int, world: int, device: torch.device,
                rows: list[int]) -> float:
    cfgs = table_configs(a, rows)
    if a.criteo_1tb:
        plan = ShardingPlan({c.name: TablePlacement("row_wise", list(range(world)))
                             for c in cfgs})
    else:
        mem = torch.cuda.get_device_properties(device).total_memory * 0.7 \
            if device.type == "cuda" else 64 << 30
        plan = propose(cfgs, PlannerConfig(world, int(mem), batch_per_rank=a.batch))
    if rank == 0:
        print(describe_plan(cfgs, plan, world_size=world), flush=True)
    t_build = time.perf_counter()
    coll = ShardedEmbeddingCollection(cfgs, plan, device, torch.Generator().manual_seed(0))
    _sync(device)
    if rank == 0:
        print(f"tables built in {time.perf_counter() - t_build:.1f} s", flush=True)
    coll.set_learning_rate(0.01)
    dense = Dense(a.dim, a.bottom, a.top, len(rows)).to(device)
    dp = DataParallel()
    lo = a.batch * rank
    step_times = []
    for step in range(a.warmup + a.steps):
        keys, x, y = make_batch(step, a.batch * world, rows, device)
        keys, x, y = keys[lo:lo + a.batch], x[lo:lo + a.batch], y[lo:lo + a.batch]
        _sync(device)
        t0 = time.perf_counter()
        offsets = torch.arange(a.batch + 1, device=device)
        sp = {f"s{i}": SparseInput(keys[:, i].contiguous(), offsets, 1) for i in range(len(rows))}
        out = coll(sp)
        emb = torch.cat([out[f"t{i}"] for i in range(len(rows))], 1)
        loss = nn.functional.binary_cross_entropy_with_logits(dense(x, emb), y)
        dense.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in dense.parameters()]
        dp.weight = 1.0 / world
        dp.grad_sync(grads)
        with torch.no_grad():
            for p in dense.parameters():
                p -= 0.01 * p.grad
        _sync(device)
        step_times.append(time.perf_counter() - t0)
    return _throughput(step_times[a.warmup:], a.batch * world, device, world)


class _PeerEmbeddings(nn.Module):
    """Plain PyTorch table-wise model parallelism: table t on rank t mod N."""

    def __init__(self, rows: list[int], dim: int, rank: int, world: int,
                 device: torch.device) -> None:
        super().__init__()
        self.world, self.n = world, len(rows)
        self.mine = [t for t in range(len(rows)) if t % world == rank]
        self.bags = nn.ModuleList(nn.EmbeddingBag(rows[t], dim, mode="sum", sparse=True,
                                                  device=device) for t in self.mine)
        self.dim = dim

    def forward(self, global_keys: torch.Tensor, batch: int) -> torch.Tensor:
        from torch.distributed.nn.functional import all_to_all_single

        world = self.world
        pooled = [bag(global_keys[:, t:t + 1]) for bag, t in zip(self.bags, self.mine)]
        # [world * batch, my tables, dim] -> send batch slice r to rank r
        local = torch.stack(pooled, 1) if pooled else global_keys.new_zeros(
            (world * batch, 0, self.dim), dtype=torch.float32)
        counts = [len([t for t in range(self.n) if t % world == r]) for r in range(world)]
        send = local.reshape(world, batch, -1).reshape(world * batch, -1)
        recv_rows = [batch] * world
        out = torch.empty(world * batch, max(counts) * self.dim, device=local.device)
        if world == 1:
            got = send
        else:
            pad = max(counts) * self.dim - send.shape[1]
            send = nn.functional.pad(send, (0, pad)) if pad else send
            got = all_to_all_single(out, send.contiguous(), recv_rows, recv_rows)
        parts = got.reshape(world, batch, -1)
        cols = [parts[r, :, : counts[r] * self.dim].reshape(batch, counts[r], self.dim)
                for r in range(world)]
        order = [t for r in range(world) for t in range(self.n) if t % world == r]
        emb = torch.cat(cols, 1)
        return emb[:, torch.argsort(torch.tensor(order))]


def run_torch(a: argparse.Namespace, rank: int, world: int, device: torch.device,
              rows: list[int]) -> float:
    emb = _PeerEmbeddings(rows, a.dim, rank, world, device)
    dense = Dense(a.dim, a.bottom, a.top, len(rows)).to(device)
    if world > 1:
        dense = nn.parallel.DistributedDataParallel(
            dense, device_ids=[device.index] if device.type == "cuda" else None)
    dense_opt = torch.optim.SGD(dense.parameters(), lr=0.01)
    sparse_opt = torch.optim.SGD(emb.parameters(), lr=0.01) if list(emb.parameters()) else None
    lo = a.batch * rank
    step_times = []
    for step in range(a.warmup + a.steps):
        keys, x, y = make_batch(step, a.batch * world, rows, device)
        x, y = x[lo:lo + a.batch], y[lo:lo + a.batch]
        _sync(device)
        t0 = time.perf_counter()
        e = emb(keys, a.batch)
        loss = nn.functional.binary_cross_entropy_with_logits(dense(x, e), y)
        dense_opt.zero_grad(set_to_none=True)
        if sparse_opt is not None:
            sparse_opt.zero_grad(set_to_none=True)
        loss.backward()
        dense_opt.step()
        if sparse_opt is not None:
            sparse_opt.step()
        _sync(device)
        step_times.append(time.perf_counter() - t0)
    return _throughput(step_times[a.warmup:], a.batch * world, device, world)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _throughput(times: list[float], samples: int, device: torch.device, world: int) -> float:
    """Global samples/s from the median step time (robust to a preempted step on a shared
    machine), the slowest rank's."""
    t = torch.tensor([sorted(times)[len(times) // 2] if times else float("inf")], device=device)
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return samples / float(t)


def _measure(a: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    """Both systems on this process group; the result (same on every rank)."""
    if a.tiny:  # a small shared CPU box: one intra-op thread per rank, for both systems
        torch.set_num_threads(1)
    base = CRITEO_1TB if a.criteo_1tb else KAGGLE
    rows = [min(r, a.max_rows) if a.max_rows > 0 else r for r in base]
    res = {"world": world, "batch_per_rank": a.batch, "tables": "criteo_1tb" if a.criteo_1tb
           else "kaggle", "rows": sum(rows), "dim": a.dim, "index": a.index,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    res["terarec"] = run_terarec(a, rank, world, device, rows)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    res["torch"] = run_torch(a, rank, world, device, rows) if a.peer else None
    return res


def _worker(rank: int, world: int, a: argparse.Namespace, port: int, out: str) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    backend = "gloo" if a.tiny or not torch.cuda.is_available() else "nccl"
    job = denv.init_process_group(rank, world, f"tcp://127.0.0.1:{port}", backend)
    device = job.device  # a gloo job uses CPU tensors even where GPUs exist
    if device.type == "cuda":
        torch.cuda.set_device(device)
    res = _measure(a, rank, world, device)
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def _torchrun(a: argparse.Namespace) -> list[dict]:
    """One world size under torchrun; appends to ``a.results`` and returns the matching rows."""
    backend = "gloo" if a.tiny else None
    denv.init_from_env(backend)
    if not dist.is_initialized():  # torchrun with one process
        dist.init_process_group(backend or denv.default_backend(), init_method="env://",
                                rank=0, world_size=1)
    job = denv.current()
    device = job.device  # from the group's backend: a gloo job uses CPU tensors
    if device.type == "cuda":
        torch.cuda.set_device(device)
    res = _measure(a, job.rank, job.world_size, device)
    dist.destroy_process_group()
    if job.rank != 0:
        return []
    print(json.dumps(res), flush=True)
    with open(a.results, "a") as f:
        f.write(json.dumps(res) + "\n")
    same = [json.loads(line) for line in Path(a.results).read_text().splitlines() if line]
    keys = ("batch_per_rank", "tables", "rows", "dim", "index", "device")
    latest: dict[int, dict] = {}
    for r in same:
        if all(r.get(k) == res[k] for k in keys):
            latest[r["world"]] = r
    return [latest[w] for w in sorted(latest)]


def _table(results: list[dict]) -> None:
    systems = ("terarec", "torch")
    base = {s: next((r[s] for r in results if r["world"] == 1 and r.get(s)), None)
            for s in systems}
    print("\n| GPUs | device | terarec samples/s | per GPU | eff. | torch samples/s | per GPU | "
          "eff. | ratio |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cells = []
        for s in systems:
            v = r.get(s)
            if not v:
                cells += ["-", "-", "-"]
                continue
            eff = f"{v / (r['world'] * base[s]):.2f}" if base[s] else "n/a"
            cells += [f"{v:,.0f}", f"{v / r['world']:,.0f}", eff]
        ratio = f"{r['terarec'] / r['torch']:.2f}" if r.get("torch") else "-"
        print(f"| {r['world']} | {r['device']} | " + " | ".join(cells) + f" | {ratio} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default="1,2")
    p.add_argument("--batch", type=int, default=65536, help="samples per GPU")
    p.add_argument("--max-rows", type=int, default=0, help="cap on table rows (0: none)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; tiny 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; tiny 3)")
    p.add_argument("--index", choices=("direct", "hash"), default="direct")
    p.add_argument("--criteo-1tb", action="store_true",
                   help="MLPerf Criteo 1TB tables (104.5 GB) row-wise over every rank")
    p.add_argument("--no-peer", dest="peer", action="store_false",
                   help="skip the plain PyTorch peer")
    p.add_argument("--results", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                      "terarec_scaling.jsonl"))
    p.add_argument("--tiny", action="store_true", help="CPU smoke run at toy size (gloo)")
    a = p.parse_args()
    a.bottom, a.top = [512, 256, a.dim], [1024, 1024, 512, 256, 1]
    a.steps = a.steps if a.steps is not None else (10 if a.tiny else 20)
    a.warmup = a.warmup if a.warmup is not None else (3 if a.tiny else 5)
    if a.criteo_1tb:
        a.peer = False
    if a.tiny:
        a.gpus, a.batch, a.dim = "1,2", 256, 16
        a.max_rows = a.max_rows or 1000
        a.bottom, a.top = [32, 16], [32, 1]
    warnings.filterwarnings("ignore", category=FutureWarning)
    if os.environ.get("WORLD_SIZE"):  # under torchrun: this launch's world size only
        results = _torchrun(a)
        if results:
            _table(results)
        return
    worlds = [int(x) for x in a.gpus.split(",")]
    have = torch.cuda.device_count()
    results = []
    for w in worlds:
        if not a.tiny and w > have:
            print(f"skip {w} GPUs: only {have} visible")
            continue
        out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"terarec_scaling_{w}.json")
        mp.start_processes(_worker, args=(w, a, denv.free_port(), out), nprocs=w,
                           start_method="spawn")
        results.append(json.loads(Path(out).read_text()))
        print(json.dumps(results[-1]), flush=True)
    _table(results)


if __name__ == "__main__":
    main()

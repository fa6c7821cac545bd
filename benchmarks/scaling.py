"""Weak scaling of DLRM (MLPerf v1 architecture) on 1/2/4 GPUs: terarec vs plain PyTorch.

Usage:
    python benchmarks/scaling.py --gpus 1,2                    # spawns 1 then 2 ranks (NCCL)
    torchrun --nproc-per-node 2 benchmarks/scaling.py          # one world size per launch
    torchrun --nproc-per-node 2 benchmarks/scaling.py --criteo-1tb   # 104.5 GB over 2 GPUs
    python benchmarks/scaling.py --tiny                        # CPU smoke run (gloo, 1 and 2 ranks)

Model: 13 dense features -> bottom MLP 512-256-128, 26 slots (Criteo Kaggle cardinalities, rows
capped by ``--max-rows`` when > 0), dim 128, dot interaction, top MLP 1024-1024-512-256-1, BCE
loss, SGD, batch 65,536 per GPU. Synthetic uniform keys, already on the device (no input
pipeline in the timing). For each world size both systems run in the same processes, one after
the other, on the same global batches (``--batches`` distinct ones, cycled):

* ``terarec``: the product's path, exactly what a HugeCTR script under torchrun runs:
  ``CreateSolver(batchsize=global, vvgpu=[[0..N-1]], use_mixed_precision=True (CUDA),
  use_cuda_graph=True)``, ``Input`` / one ``SparseEmbedding`` over the 26 slots
  (``slot_size_array``; keys = slot offset + id) / ``DenseLayer`` MLP + Interaction + MLP + BCE,
  ``compile()``, then ``model.train(batch)`` with this rank's slice of the global batch. The
  table type is HugeCTR's ``LocalizedSlotSparseEmbeddingOneHot`` (``--index hash``:
  ``LocalizedSlotSparseEmbeddingHash``), so on N ranks slot ``i`` lives on rank ``i mod N``
  (``TERAREC_SHARDING_PLAN`` picks another plan, as for any script). On one rank this is the
  one-process path (fused Triton lookup/update, the whole step in one CUDA graph).
* ``torch``: the peer written in plain PyTorch: DDP for the dense part under bf16 autocast (as
  ``train_throughput.py``'s peer) and manual table-wise placement (table ``t`` on rank
  ``t mod N``, ``nn.EmbeddingBag`` over the global batch, pooled vectors redistributed with an
  autograd all-to-all, sparse SGD).

``--criteo-1tb``: the MLPerf DLRM-DCNv2 Criteo tables (performance_anchors.md 2.1: 26 slots,
204,184,588 rows = 104.5 GB fp32 at dim 128) over every rank, the same DLRM dense part; terarec
only (the peer would need 61 GB of table-wise tables on one GPU plus its sparse gradients).
``--index direct`` (default): ``LocalizedSlotSparseEmbeddingOneHot``, slot ``i`` on rank
``i mod N`` (``--plan slot_wise``, HugeCTR's placement: the fixed-size slot exchange; 2 ranks
hold 43 / 61 GB) or striped row-wise by a JSON plan in ``TERAREC_SHARDING_PLAN``
(``--plan row_wise``: 52 GB each, the routed exchange); ``--index hash``:
``DistributedSlotSparseEmbeddingHash`` (row-wise by HugeCTR's own rule).

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
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import terarec as hugectr  # noqa: E402
from terarec.data.batch import Batch  # noqa: E402
from terarec.distributed import announce_next_batch  # noqa: E402
from terarec.distributed import env as denv  # noqa: E402
from terarec.embedding.plan import ShardingPlan, TablePlacement  # noqa: E402
from terarec.sparse import SparseInput  # noqa: E402

#: MLPerf DLRM-DCNv2 Criteo 1TB tables (40M cap): 204,184,588 rows, 104.5 GB fp32 at dim 128.
CRITEO_1TB = [40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282,
              10, 2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108,
              36]
KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
LR = 0.01


def make_batches(a: argparse.Namespace, rows: list[int], rank: int, world: int,
                 device: torch.device) -> list[tuple[Batch, torch.Tensor, torch.Tensor,
                                                     torch.Tensor]]:
    """``a.batches`` global batches (identical on every rank: seeded by their index), each as
    (terarec: this rank's slice as a ``Batch`` with keys = slot offset + id; peer: the global
    ``[B_global, slots]`` local ids, this rank's dense features and labels)."""
    offs = torch.tensor([0, *rows[:-1]], dtype=torch.int64, device=device).cumsum(0)
    card = torch.tensor(rows, dtype=torch.int64, device=device)
    n, slots, lo = a.batch * world, len(rows), a.batch * rank
    out = []
    for i in range(getattr(a, "batches", 2)):
        g = torch.Generator(device=device).manual_seed(1000 + i)
        ids = (torch.rand(n, slots, generator=g, device=device, dtype=torch.float64)
               * card).to(torch.int64).clamp_(max=card - 1)
        dense = torch.rand(n, 13, generator=g, device=device)
        labels = (torch.rand(n, 1, generator=g, device=device) < 0.3).float()
        mine = slice(lo, lo + a.batch)
        keys = (ids[mine] + offs).reshape(-1).contiguous()
        offsets = torch.arange(a.batch * slots + 1, dtype=torch.int64, device=device)
        batch = Batch(labels[mine].contiguous(), dense[mine].contiguous(),
                      {"data1": SparseInput(keys, offsets, slots)})
        out.append((batch, ids, dense[mine].contiguous(), labels[mine].contiguous()))
    return out


def embedding_type(a: argparse.Namespace) -> str:
    if a.criteo_1tb and a.index == "hash":
        return "DistributedSlotSparseEmbeddingHash"
    return ("LocalizedSlotSparseEmbeddingOneHot" if a.index == "direct"
            else "LocalizedSlotSparseEmbeddingHash")


def use_row_wise_plan(a: argparse.Namespace, world: int, rank: int) -> None:
    """``--criteo-1tb --index direct``: the one-hot table row-wise (striped) over every rank
    through ``TERAREC_SHARDING_PLAN``, as a user would ask for it (a JSON plan)."""
    path = Path(tempfile.gettempdir()) / f"terarec_scaling_plan_w{world}_r{rank}.json"
    path.write_text(ShardingPlan({"emb": TablePlacement("row_wise", list(range(world)))})
                    .to_json() + "\n")
    os.environ["TERAREC_SHARDING_PLAN"] = str(path)


def build_model(a: argparse.Namespace, world: int, device: torch.device,
                rows: list[int]) -> hugectr.Model:
    """The DLRM through the HugeCTR API (see module docstring)."""
    cuda = device.type == "cuda"
    solver = hugectr.CreateSolver(batchsize=a.batch * world, batchsize_eval=a.batch * world,
                                  lr=LR, vvgpu=[list(range(world))] if cuda else None,
                                  use_mixed_precision=cuda, use_cuda_graph=True, seed=0,
                                  i64_input_key=True)
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.SGD,
                                  update_type=hugectr.Update_t.Local)
    model = hugectr.Model(solver, None, opt)
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("data1", 1, True, len(rows))]))
    model.add(hugectr.SparseEmbedding(embedding_type=getattr(hugectr.Embedding_t,
                                                             embedding_type(a)),
                                      slot_size_array=rows, embedding_vec_size=a.dim,
                                      combiner="sum", sparse_embedding_name="emb",
                                      bottom_name="data1", optimizer=opt))
    L, A, D = hugectr.Layer_t, hugectr.Activation_t, hugectr.DenseLayer  # noqa: N806
    model.add(D(layer_type=L.MLP, bottom_names=["dense"], top_names=["bot"],
                num_outputs=a.bottom, act_type=A.Relu))
    model.add(D(layer_type=L.Interaction, bottom_names=["bot", "emb"], top_names=["it"]))
    model.add(D(layer_type=L.MLP, bottom_names=["it"], top_names=["logit"], num_outputs=a.top,
                activations=[A.Relu] * (len(a.top) - 1) + [A.Non]))
    model.add(D(layer_type=L.BinaryCrossEntropyLoss, bottom_names=["logit", "label"],
                top_names=["loss"]))
    model.compile()
    return model


def describe_path(model: hugectr.Model) -> dict:
    """Which path the step took: table classes, fast path, whole-step / dense-only graph."""
    e = model.engine
    step_graph = e.step_graph.graph is not None
    info = {"tables": {n: type(t).__name__ for n, t in e.tables.items()},
            "placement": {n: getattr(getattr(t, "placement", None), "kind", "whole")
                          for n, t in e.tables.items()},
            "whole_step_graph": step_graph,
            "dense_graph": bool(e._graph),
            "grad_sync": e.grad_sync is not None, "loss_sync": e.loss_sync is not None,
            "fused_embed": "embed" in vars(e),
            "fixed_exchange_steps": {n: t._exchange._steps for n, t in e.tables.items()
                                     if getattr(t, "_exchange", None) is not None}}
    shards = {n: getattr(t, "shard", None) or t for n, t in e.tables.items()}
    info["fast_path"] = {n: "direct" if getattr(sh, "_fast_ready", False) else
                         "hash" if getattr(sh, "_hash_ready", False) else "none"
                         for n, sh in shards.items()}
    return info


def run_terarec(a: argparse.Namespace, rank: int, world: int, device: torch.device,
                rows: list[int], batches: list) -> tuple[float, dict]:
    if a.criteo_1tb and a.index == "direct" and world > 1 and a.plan == "row_wise":
        use_row_wise_plan(a, world, rank)
    t_build = time.perf_counter()
    model = build_model(a, world, device, rows)
    _sync(device)
    if rank == 0:
        print(f"terarec: hugectr.Model, SparseEmbedding({embedding_type(a)}, {len(rows)} slots, "
              f"{sum(rows):,} rows x {a.dim}), {world} rank(s); built in "
              f"{time.perf_counter() - t_build:.1f} s", flush=True)
        if a.criteo_1tb:
            where = ("row_wise over every rank" if a.plan == "row_wise" or a.index == "hash"
                     else "slot-wise (slot i on rank i mod N, HugeCTR's Localized placement)")
            print(f"placement: {where}" if world > 1 else
                  f"placement: whole table on one device ({where} over 1 rank)", flush=True)

    def step(i: int) -> None:
        # With TERAREC_OVERLAP_INPUT_DIST=1 the next batch's keys travel during this step.
        announce_next_batch(model, batches[(i + 1) % len(batches)][0])
        model.train(batches[i % len(batches)][0])

    dt = _timed(step, a, device, world)
    if a.profile:
        _profile(step, a, device, rank)
    info = describe_path(model)
    loss = float(model._loss) if model._loss is not None else float("nan")
    info["last_loss"] = loss
    if rank == 0:
        print(f"terarec path: {json.dumps(info)}", flush=True)
    return a.batch * world / dt, info


# ------------------------------------------------------------------------------ plain PyTorch
def mlp(sizes: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Dense(nn.Module):
    """Bottom MLP, dot interaction (lower triangle + one zero column, as HugeCTR's
    Interaction layer), top MLP."""

    def __init__(self, dim: int, bottom: list[int], top: list[int], n_tables: int) -> None:
        super().__init__()
        self.bottom = mlp([13, *bottom])
        n = n_tables + 1
        self.top = mlp([dim + n * (n - 1) // 2 + 1, *top], last_act=False)
        self.register_buffer("li", torch.tril_indices(n, n, offset=-1), persistent=False)

    def forward(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        feats = torch.cat([x.unsqueeze(1), emb.to(x.dtype)], 1)
        inter = torch.bmm(feats, feats.transpose(1, 2))[:, self.li[0], self.li[1]]
        return self.top(torch.cat([x, inter, x.new_zeros(x.shape[0], 1)], 1))


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
              rows: list[int], batches: list) -> float:
    emb = _PeerEmbeddings(rows, a.dim, rank, world, device)
    dense = Dense(a.dim, a.bottom, a.top, len(rows)).to(device)
    if world > 1:
        dense = nn.parallel.DistributedDataParallel(
            dense, device_ids=[device.index] if device.type == "cuda" else None)
    dense_opt = torch.optim.SGD(dense.parameters(), lr=LR, foreach=True)
    sparse_opt = torch.optim.SGD(emb.parameters(), lr=LR) if list(emb.parameters()) else None
    cuda = device.type == "cuda"

    def step(i: int) -> None:
        _, ids, x, y = batches[i % len(batches)]
        dense_opt.zero_grad(set_to_none=True)
        if sparse_opt is not None:
            sparse_opt.zero_grad(set_to_none=True)
        e = emb(ids, a.batch)  # fp32 lookups and exchange, as nn.EmbeddingBag gives them
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = dense(x, e)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        loss.backward()
        dense_opt.step()
        if sparse_opt is not None:
            sparse_opt.step()

    dt = _timed(step, a, device, world)
    return a.batch * world / dt


def _timed(step, a: argparse.Namespace, device: torch.device, world: int) -> float:  # noqa: ANN001
    """Seconds per step: ``a.warmup`` untimed steps, then ``a.steps`` back to back (the host
    enqueues ahead of the device, as in training) with one synchronisation at the end; the
    slowest rank's."""
    for i in range(a.warmup):
        step(i)
    _sync(device)
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(a.warmup + i)
    _sync(device)
    t = torch.tensor([(time.perf_counter() - t0) / max(a.steps, 1)], device=device)
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _profile(step, a: argparse.Namespace, device: torch.device, rank: int) -> None:  # noqa: ANN001
    """``a.profile`` more steps under the torch profiler (every rank steps; rank 0 prints the
    kernels by device time per step)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(a.profile):
            step(i)
        _sync(device)
    if rank == 0:
        avg = prof.key_averages()
        print(f"profile of {a.profile} steps (device time, all kernels):", flush=True)
        print(avg.table(sort_by="device_time_total", row_limit=25, max_name_column_width=70),
              flush=True)
        print(f"profile of {a.profile} steps (self device time: the kernels):", flush=True)
        print(avg.table(sort_by="self_device_time_total", row_limit=30,
                        max_name_column_width=90), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _measure(a: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    """Both systems on this process group; the result (same on every rank)."""
    if a.tiny:  # a small shared CPU box: one intra-op thread per rank, for both systems
        torch.set_num_threads(1)
    base = CRITEO_1TB if a.criteo_1tb else KAGGLE
    rows = [min(r, a.max_rows) if a.max_rows > 0 else r for r in base]
    # TERAREC_EXCHANGE_AT_ONE_RANK=1 at one rank: the sharded path's cost without the link
    # (kept apart from the one-process rows of the efficiency table)
    api = ("hugectr.Model, sharded path at one rank"
           if world == 1 and denv.exchange_at_one_rank() else "hugectr.Model")
    res = {"api": api, "world": world, "batch_per_rank": a.batch,
           "tables": "criteo_1tb" if a.criteo_1tb else "kaggle", "rows": sum(rows),
           "dim": a.dim, "index": a.index,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    batches = make_batches(a, rows, rank, world, device)
    # the peer first, on a pristine process (terarec's compile sets global precision flags)
    res["torch"] = run_torch(a, rank, world, device, rows, batches) if a.peer else None
    _free(device)
    res["terarec"], res["terarec_path"] = run_terarec(a, rank, world, device, rows, batches)
    _free(device)
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
    keys = ("api", "batch_per_rank", "tables", "rows", "dim", "index", "device")
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
    p.add_argument("--batches", type=int, default=4, help="distinct global batches, cycled")
    p.add_argument("--criteo-1tb", action="store_true",
                   help="MLPerf Criteo 1TB tables (104.5 GB) over every rank")
    p.add_argument("--plan", choices=("slot_wise", "row_wise"), default="slot_wise",
                   help="--criteo-1tb --index direct: HugeCTR's slot-wise placement of the "
                        "Localized one-hot table, or row-wise (striped) by a JSON plan")
    p.add_argument("--no-peer", dest="peer", action="store_false",
                   help="skip the plain PyTorch peer")
    p.add_argument("--results", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                      "terarec_scaling.jsonl"))
    p.add_argument("--tiny", action="store_true", help="CPU smoke run at toy size (gloo)")
    p.add_argument("--profile", type=int, default=0,
                   help="profile this many extra terarec steps and print the top kernels")
    a = p.parse_args()
    a.bottom, a.top = [512, 256, a.dim], [1024, 1024, 512, 256, 1]
    a.steps = a.steps if a.steps is not None else (10 if a.tiny else 20)
    a.warmup = a.warmup if a.warmup is not None else (3 if a.tiny else 5)
    if a.criteo_1tb:
        a.peer = False
    if a.tiny:
        a.gpus, a.batch, a.dim, a.batches = "1,2", 256, 16, 2
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

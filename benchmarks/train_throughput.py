"""Training throughput: terarec (through ``hugectr.Model``) against plain PyTorch, one process.

Both train on the same synthetic batches, already on the device (no input pipeline in the
timing): 13 dense features, 26 categorical slots with the Criteo Kaggle cardinalities (capped by
``--max-rows``), batch 65,536. Configurations (issue 4):

* ``dlrm``  MLPerf DLRM v1: one-hot, dim 128, bottom MLP 512-256-128, dot Interaction, top MLP
  1024-1024-512-256-1, SGD. terarec: ``LocalizedSlotSparseEmbeddingOneHot`` with the
  ``slot_size_array`` (keys = slot offset + id), as HugeCTR's DLRM samples.
* ``dcnv2`` MLPerf DCNv2 shape: multi-hot (214 lookups/sample), dim 128, bottom 512-256-128,
  3 low-rank cross layers (rank 512) on [bottom, embeddings], top 1024-1024-512-256-1, AdaGrad.
  terarec: ``LocalizedSlotSparseEmbeddingHash`` (multi-hot needs a hash table in HugeCTR).
* ``dcn``   the DCN example: one-hot, dim 16, 6 cross layers + FC 1024 on [embeddings, dense].
* ``wdl``   Wide & Deep: wide dim-1 embedding summed + deep dim-16 MLP 1024-1024-1.

The peer is plain PyTorch: one ``nn.EmbeddingBag(sparse=True)`` per slot + ``torch.optim.SGD``
(AdaGrad / Adam as configured) + the same dense layers under bf16 autocast on CUDA.
terarec runs ``CreateSolver(use_mixed_precision=True)`` + ``model.add(...)`` and steps with
``model.train(batch)``. Prints samples/s of each, the ratio, and the fraction of the roofline.

    python3 benchmarks/train_throughput.py [--config dlrm] [--batch 65536] [--steps 30]
    python3 benchmarks/train_throughput.py --tiny          # CPU-sized smoke run (any device)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import terarec as hugectr
from terarec.data.batch import Batch
from terarec.sparse import SparseInput

KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
DCNV2_HOT = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
CONFIGS = {
    "dlrm": dict(dim=128, hot=[1] * 26, opt="SGD", lr=0.01),
    "dcnv2": dict(dim=128, hot=DCNV2_HOT, opt="AdaGrad", lr=0.001),
    "dcn": dict(dim=16, hot=[1] * 26, opt="Adam", lr=0.001),
    "wdl": dict(dim=16, hot=[1] * 26, opt="SGD", lr=0.01),
}
# Roofline samples/s on one H100 (performance_anchors.md §10 at the measured 3.0 TB/s).
ROOFLINE = {"dlrm": 30e6, "dcnv2": 5.5e6, "dcn": None, "wdl": None}
BOTTOM, TOP = [512, 256, 128], [1024, 1024, 512, 256, 1]


def make_batches(card: list[int], hot: list[int], batch: int, n: int, device: torch.device,
                 seed: int = 0) -> list[tuple[Batch, list[torch.Tensor]]]:
    """``n`` batches: (terarec Batch with global keys, per-slot local ids [B, hot] for the peer)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    offs = [0]
    for c in card[:-1]:
        offs.append(offs[-1] + c)
    out = []
    for _ in range(n):
        local = [torch.randint(0, c, (batch, h), generator=gen, device=device)
                 for c, h in zip(card, hot)]
        keys = torch.cat([ids + o for ids, o in zip(local, offs)], dim=1).reshape(-1)
        lengths = torch.tensor(hot, device=device).repeat(batch)
        offsets = torch.zeros(batch * len(hot) + 1, dtype=torch.int64, device=device)
        offsets[1:] = torch.cumsum(lengths, 0)
        dense = torch.rand(batch, 13, generator=gen, device=device)
        labels = (torch.rand(batch, 1, generator=gen, device=device) < 0.25).float()
        sp = SparseInput(keys, offsets, len(hot))
        out.append((Batch(labels, dense, {"data1": sp, "wide": sp}), local))
    return out


# ------------------------------------------------------------------------------ plain PyTorch
def mlp(widths: list[int], k: int, last_act: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, w in enumerate(widths):
        mods.append(nn.Linear(k, w))
        if i < len(widths) - 1 or last_act:
            mods.append(nn.ReLU())
        k = w
    return nn.Sequential(*mods)


class Cross(nn.Module):
    """DCN cross layers: v1 (rank 0) or low-rank v2."""

    def __init__(self, n: int, layers: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        if rank:
            self.u = nn.ModuleList(nn.Linear(n, rank, bias=False) for _ in range(layers))
            self.v = nn.ModuleList(nn.Linear(rank, n) for _ in range(layers))
        else:
            self.w = nn.ModuleList(nn.Linear(n, 1, bias=False) for _ in range(layers))
            self.b = nn.ParameterList(nn.Parameter(torch.zeros(n)) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for i in range(len(self.u) if self.rank else len(self.w)):
            if self.rank:
                x = x0 * self.v[i](self.u[i](x)) + x
            else:
                x = x0 * self.w[i](x) + self.b[i] + x
        return x


class Peer(nn.Module):
    """The plain-PyTorch version of each configuration."""

    def __init__(self, config: str, card: list[int], dim: int) -> None:
        super().__init__()
        self.config = config
        self.embs = nn.ModuleList(nn.EmbeddingBag(c, dim, mode="sum", sparse=True)
                                  for c in card)
        s = len(card)
        if config == "dlrm":
            self.bottom = mlp(BOTTOM, 13, True)
            n = s + 1
            self.register_buffer("li", torch.tril_indices(n, n, offset=-1), persistent=False)
            self.top = mlp(TOP, BOTTOM[-1] + n * (n - 1) // 2 + 1, False)
        elif config == "dcnv2":
            self.bottom = mlp(BOTTOM, 13, True)
            self.cross = Cross(BOTTOM[-1] + s * dim, 3, 512)
            self.top = mlp(TOP, BOTTOM[-1] + s * dim, False)
        elif config == "dcn":
            self.cross = Cross(s * dim + 13, 6, 0)
            self.deep = mlp([1024], s * dim + 13, True)
            self.top = mlp([1], 1024 + s * dim + 13, False)
        else:
            self.wide = nn.ModuleList(nn.EmbeddingBag(c, 1, mode="sum", sparse=True)
                                      for c in card)
            self.top = mlp([1024, 1024, 1], s * dim, False)

    def forward(self, dense: torch.Tensor, local: list[torch.Tensor]) -> torch.Tensor:
        emb = torch.stack([e(ids) for e, ids in zip(self.embs, local)], dim=1)  # B, S, D
        if self.config == "dlrm":
            x = self.bottom(dense)
            v = torch.cat([x.unsqueeze(1), emb.to(x.dtype)], dim=1)
            gram = torch.bmm(v, v.transpose(1, 2))
            pairs = gram[:, self.li[0], self.li[1]]
            z = torch.cat([x, pairs, x.new_zeros(x.shape[0], 1)], dim=1)
            return self.top(z)
        if self.config == "dcnv2":
            x0 = torch.cat([self.bottom(dense), emb.flatten(1).to(torch.bfloat16)
                            if dense.is_cuda else emb.flatten(1)], dim=1)
            return self.top(self.cross(x0))
        if self.config == "dcn":
            x0 = torch.cat([emb.flatten(1), dense], dim=1)
            return self.top(torch.cat([self.deep(x0), self.cross(x0)], dim=1))
        wide = sum(w(ids) for w, ids in zip(self.wide, local))
        return self.top(emb.flatten(1)) + wide


def peer_optimizer(model: Peer, opt: str, lr: float) -> list[torch.optim.Optimizer]:
    sparse = [p for n, p in model.named_parameters() if n.startswith(("embs", "wide"))]
    dense = [p for n, p in model.named_parameters() if not n.startswith(("embs", "wide"))]
    if opt == "SGD":
        return [torch.optim.SGD(sparse, lr=lr), torch.optim.SGD(dense, lr=lr, foreach=True)]
    if opt == "AdaGrad":
        return [torch.optim.Adagrad(sparse, lr=lr), torch.optim.Adagrad(dense, lr=lr,
                                                                        foreach=True)]
    return [torch.optim.SparseAdam(sparse, lr=lr), torch.optim.Adam(dense, lr=lr, foreach=True)]


def peer_step(model: Peer, opts: list[torch.optim.Optimizer], batch: Batch,
              local: list[torch.Tensor]) -> torch.Tensor:
    for o in opts:
        o.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.dense.is_cuda):
        logits = model(batch.dense, local)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), batch.labels)
    loss.backward()
    for o in opts:
        o.step()
    return loss.detach()


# ------------------------------------------------------------------------------ terarec
def terarec_model(config: str, card: list[int], cfg: dict, batch: int,
                  device: torch.device) -> hugectr.Model:
    dim, hot = cfg["dim"], cfg["hot"]
    solver = hugectr.CreateSolver(batchsize=batch, batchsize_eval=batch, lr=cfg["lr"],
                                  vvgpu=[[0]] if device.type == "cuda" else None,
                                  use_mixed_precision=device.type == "cuda",
                                  use_cuda_graph=True, seed=0)
    opt = hugectr.CreateOptimizer(optimizer_type=getattr(hugectr.Optimizer_t, cfg["opt"]),
                                  update_type=hugectr.Update_t.Local)
    model = hugectr.Model(solver, None, opt)
    params = [hugectr.DataReaderSparseParam("data1", max(hot), max(hot) == 1, len(hot))]
    if config == "wdl":
        params.append(hugectr.DataReaderSparseParam("wide", 1, True, len(hot)))
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                            data_reader_sparse_param_array=params))
    one_hot = max(hot) == 1
    etype = (hugectr.Embedding_t.LocalizedSlotSparseEmbeddingOneHot if one_hot
             else hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash)
    model.add(hugectr.SparseEmbedding(embedding_type=etype, slot_size_array=card,
                                      embedding_vec_size=dim, combiner="sum",
                                      sparse_embedding_name="emb", bottom_name="data1",
                                      optimizer=opt))
    L, A = hugectr.Layer_t, hugectr.Activation_t  # noqa: N806
    D = hugectr.DenseLayer  # noqa: N806
    s = len(hot)
    if config == "dlrm":
        model.add(D(layer_type=L.MLP, bottom_names=["dense"], top_names=["bot"],
                    num_outputs=BOTTOM, act_type=A.Relu))
        model.add(D(layer_type=L.Interaction, bottom_names=["bot", "emb"], top_names=["it"]))
        model.add(D(layer_type=L.MLP, bottom_names=["it"], top_names=["logit"],
                    num_outputs=TOP, activations=[A.Relu] * 4 + [A.Non]))
    elif config == "dcnv2":
        model.add(D(layer_type=L.MLP, bottom_names=["dense"], top_names=["bot"],
                    num_outputs=BOTTOM, act_type=A.Relu))
        model.add(D(layer_type=L.Reshape, bottom_names=["emb"], top_names=["flat"],
                    leading_dim=s * dim))
        model.add(D(layer_type=L.Concat, bottom_names=["bot", "flat"], top_names=["x0"]))
        model.add(D(layer_type=L.MultiCross, bottom_names=["x0"], top_names=["cross"],
                    num_layers=3, projection_dim=512))
        model.add(D(layer_type=L.MLP, bottom_names=["cross"], top_names=["logit"],
                    num_outputs=TOP, activations=[A.Relu] * 4 + [A.Non]))
    elif config == "dcn":
        model.add(D(layer_type=L.Reshape, bottom_names=["emb"], top_names=["flat"],
                    leading_dim=s * dim))
        model.add(D(layer_type=L.Concat, bottom_names=["flat", "dense"], top_names=["x0"]))
        model.add(D(layer_type=L.MultiCross, bottom_names=["x0"], top_names=["cross"],
                    num_layers=6))
        model.add(D(layer_type=L.MLP, bottom_names=["x0"], top_names=["deep"],
                    num_outputs=[1024], act_type=A.Relu))
        model.add(D(layer_type=L.Concat, bottom_names=["deep", "cross"], top_names=["x1"]))
        model.add(D(layer_type=L.MLP, bottom_names=["x1"], top_names=["logit"],
                    num_outputs=[1], act_type=A.Non))
    else:
        model.add(hugectr.SparseEmbedding(embedding_type=etype, slot_size_array=card,
                                          embedding_vec_size=1, combiner="sum",
                                          sparse_embedding_name="wide_emb", bottom_name="wide",
                                          optimizer=opt))
        model.add(D(layer_type=L.Reshape, bottom_names=["wide_emb"], top_names=["wflat"],
                    leading_dim=s))
        model.add(D(layer_type=L.ReduceSum, bottom_names=["wflat"], top_names=["wsum"],
                    axis=1))
        model.add(D(layer_type=L.Reshape, bottom_names=["emb"], top_names=["flat"],
                    leading_dim=s * dim))
        model.add(D(layer_type=L.MLP, bottom_names=["flat"], top_names=["deep"],
                    num_outputs=[1024, 1024, 1], activations=[A.Relu, A.Relu, A.Non]))
        model.add(D(layer_type=L.Add, bottom_names=["deep", "wsum"], top_names=["logit"]))
    model.add(D(layer_type=L.BinaryCrossEntropyLoss, bottom_names=["logit", "label"],
                top_names=["loss"]))
    model.compile()
    return model


def terarec_step(model: hugectr.Model):  # noqa: ANN201
    """One ``model.train`` step on a batch, returning the loss (the timed terarec step)."""

    def step(b: Batch, _loc: list[torch.Tensor]) -> torch.Tensor:
        model.train(b)
        return model._loss

    return step


# ------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, batches: list, warmup: int, steps: int, device: torch.device,
          ) -> tuple[float, float, float]:
    """(seconds per step, first loss, last loss) over ``steps`` steps after ``warmup``."""
    first = step(*batches[0])
    for i in range(1, warmup):
        step(*batches[i % len(batches)])
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        last = step(*batches[i % len(batches)])
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    if device.type == "cuda":  # host time to enqueue 2 steps (GPU idle at the start)
        t0 = time.perf_counter()
        for i in range(2):
            step(*batches[i % len(batches)])
        host = (time.perf_counter() - t0) / 2
        sync(device)
        print(f"    host enqueue time {host * 1e3:.2f} ms/step (GPU-bound when below ms/step)")
    return dt, float(first), float(last)


def interleaved(steps_by_name: dict, batches: list, warmup: int, steps: int, rounds: int,
                device: torch.device) -> dict[str, tuple[float, float, float]]:
    """:func:`timed` for several systems at once: after ``warmup`` steps each, ``rounds``
    rounds of ``steps // rounds`` steps per system, the order reversed every round; seconds per
    step = the median round. A shared, drifting host (a 2-core VM whose speed changed 25%
    within a minute, session 5) then slows both systems alike instead of the one timed last."""
    first = {n: float(f(*batches[0])) for n, f in steps_by_name.items()}
    for f in steps_by_name.values():
        for i in range(1, warmup):
            f(*batches[i % len(batches)])
    per_round = max(1, steps // rounds)
    times: dict[str, list[float]] = {n: [] for n in steps_by_name}
    last: dict[str, float] = {}
    names = list(steps_by_name)
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            t0 = time.perf_counter()
            for i in range(per_round):
                out = steps_by_name[n](*batches[i % len(batches)])
            sync(device)
            times[n].append((time.perf_counter() - t0) / per_round)
            last[n] = float(out)
    return {n: (sorted(v)[len(v) // 2], first[n], last[n]) for n, v in times.items()}


def profile(step, batches: list, n: int, device: torch.device) -> None:
    """Top device kernels (total time over ``n`` steps) of ``step``, via torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with prof(activities=acts) as pr:
        for i in range(n):
            step(*batches[i % len(batches)])
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(pr.key_averages().table(sort_by=key, row_limit=28, max_name_column_width=60))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="dlrm")
    p.add_argument("--batch", type=int, default=65536)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-rows", type=int, default=0, help="cap every table (0 = Kaggle)")
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--tiny", action="store_true", help="small CPU-sized run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--profile", type=int, default=0,
                   help="profile N terarec steps; print the top CUDA kernels")
    p.add_argument("--rounds", type=int, default=0,
                   help="time peer and terarec (eager) in this many alternating rounds, both "
                        "models built at once (default: 6 on CPU, 1 = one after the other on "
                        "CUDA, where the peer is freed before terarec is built)")
    a = p.parse_args()
    if a.tiny:
        a.batch, a.steps, a.warmup, a.batches = 512, 24, 3, 2
        a.max_rows = a.max_rows or 2000
    device = torch.device(a.device)
    cfg = CONFIGS[a.config]
    card = [min(c, a.max_rows) if a.max_rows else c for c in KAGGLE]
    torch.manual_seed(0)
    batches = make_batches(card, cfg["hot"], a.batch, a.batches, device)
    print(f"config {a.config}: batch {a.batch}, {sum(card):,} rows x dim {cfg['dim']}, "
          f"{sum(cfg['hot'])} lookups/sample, {cfg['opt']}, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    results = {}
    rounds = a.rounds or (6 if device.type == "cpu" else 1)
    if rounds > 1 and not a.skip_peer:
        both = _interleaved_run(a, card, cfg, batches, device, rounds)
        for name, (dt, l0, l1) in both.items():
            print(f"{name:14s}: {dt * 1e3:8.2f} ms/step  {a.batch / dt / 1e6:7.3f} M samples/s"
                  f"  loss {l0:.4f} -> {l1:.4f}   (median of {rounds} alternating rounds)")
        ratio = both["plain PyTorch"][0] / both["terarec"][0]
        print(f"ratio terarec / plain PyTorch ({device.type}): {ratio:.2f}x")
        return
    if not a.skip_peer:
        peer = Peer(a.config, card, cfg["dim"]).to(device)
        opts = peer_optimizer(peer, cfg["opt"], cfg["lr"])
        dt, l0, l1 = timed(lambda b, loc: peer_step(peer, opts, b, loc), batches, a.warmup,
                           a.steps, device)
        results["plain PyTorch"] = dt
        print(f"{'plain PyTorch':14s}: {dt * 1e3:8.2f} ms/step  {a.batch / dt / 1e6:7.3f} M samples/s"
              f"  loss {l0:.4f} -> {l1:.4f}")
        del peer, opts
        if device.type == "cuda":
            torch.cuda.empty_cache()
    model = terarec_model(a.config, card, cfg, a.batch, device)
    tr_step = terarec_step(model)
    variants = [("terarec", False)]
    if device.type == "cuda" and model.solver.use_cuda_graph:
        variants.append(("terarec + CUDA graph", True))
    for name, graph in variants:
        # Model.compile wires use_cuda_graph into the engine once the lead adds that line;
        # set here explicitly so both variants are timed in one run.
        model.engine.use_cuda_graph = graph
        dt, l0, l1 = timed(tr_step, batches, a.warmup, a.steps, device)
        if graph and not model.engine.use_cuda_graph:
            name = "terarec (graph capture failed, eager)"
        results[name] = dt
        variants = [(name if g == graph else n, g) for n, g in variants]
        print(f"{name:14s}: {dt * 1e3:8.2f} ms/step  {a.batch / dt / 1e6:7.3f} M samples/s"
              f"  loss {l0:.4f} -> {l1:.4f}")
    best = min(results[n] for n, _ in variants)
    if "plain PyTorch" in results:
        for name, _ in variants:
            ratio = results["plain PyTorch"] / results[name]
            print(f"ratio {name} / plain PyTorch ({device.type}): {ratio:.2f}x")
    if a.profile:
        profile(tr_step, batches, a.profile, device)
    roof = ROOFLINE.get(a.config)
    if roof and device.type == "cuda":
        print(f"fraction of the roofline ({roof / 1e6:.1f}M samples/s, anchors §10): "
              f"{a.batch / best / roof:.1%}")


def _interleaved_run(a: argparse.Namespace, card: list[int], cfg: dict, batches: list,
                     device: torch.device, rounds: int) -> dict[str, tuple[float, float, float]]:
    peer = Peer(a.config, card, cfg["dim"]).to(device)
    opts = peer_optimizer(peer, cfg["opt"], cfg["lr"])
    model = terarec_model(a.config, card, cfg, a.batch, device)
    model.engine.use_cuda_graph = False
    return interleaved({"plain PyTorch": lambda b, loc: peer_step(peer, opts, b, loc),
                        "terarec": terarec_step(model)}, batches, a.warmup, a.steps, rounds,
                       device)


if __name__ == "__main__":
    main()

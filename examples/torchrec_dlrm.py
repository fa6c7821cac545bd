"""DLRM written the TorchRec way, run by ``terarec.torchrec`` (TorchRec itself is not needed).

    python examples/torchrec_dlrm.py [--samples N --iters N --batchsize N --data-dir DIR]
    torchrun --nproc-per-node 2 examples/torchrec_dlrm.py   # DistributedModelParallel (gloo on CPU)

A TorchRec script with ``from torchrec ...`` replaced by ``from terarec.torchrec ...``:
``EmbeddingBagConfig`` / ``EmbeddingBagCollection`` (one table per sparse feature),
``KeyedJaggedTensor.from_lengths_sync`` batches, the sparse optimizer fused into the backward
(``apply_optimizer_in_backward``, or ``--fused-params``: FBGEMM's ``fused_params``), a dense
optimizer over ``model.parameters()`` and ``TrainPipelineSparseDist(...).progress(iterator)``.
Data: Criteo-shaped synthetic samples (13 dense features, 10 sparse features, two multi-hot)
labelled by terarec's planted teacher model, whose AUC is the best any model can reach.
``--data-dir`` is unused (the data is generated in memory); it is accepted like the other
examples'.
"""

import argparse
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from terarec.data.synthetic import SynthSpec, make_samples, make_teacher
from terarec.metrics import AUC
from terarec.torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbOptimType,
    KeyedJaggedTensor,
    TrainPipelineSparseDist,
    apply_optimizer_in_backward,
)
from terarec.torchrec.model_parallel import DistributedModelParallel

p = argparse.ArgumentParser()
p.add_argument("--data-dir", default="./torchrec_dlrm_data", help="unused: data is in memory")
p.add_argument("--samples", type=int, default=200_000)
p.add_argument("--batchsize", type=int, default=2048, help="global batch (all ranks)")
p.add_argument("--iters", type=int, default=600)
p.add_argument("--fused-params", action="store_true",
               help="name the sparse optimizer FBGEMM's way instead of apply_optimizer_in_backward")
args = p.parse_args()

# ---- processes: plain python = 1 process; torchrun = one rank each, DistributedModelParallel
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
else:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# ---- data: every rank draws the same samples (same seed) and trains on its slice of each batch
SLOT_SIZES = [1000, 500, 20000, 8000, 300, 24, 1200, 3, 9000, 5000]  # rows of each feature
NNZ = [1] * 8 + [3] * 2  # the last 2 features hold 1..3 ids per sample
FEATURES = [f"C{i + 1}" for i in range(len(SLOT_SIZES))]
spec = SynthSpec(slot_size_array=SLOT_SIZES, nnz_array=NNZ, dense_dim=13, seed=0)
teacher = make_teacher(spec)
rng = np.random.default_rng(1)
n_eval = max(args.batchsize, args.samples // 4)
train_chunk, _ = make_samples(spec, args.samples, rng, teacher)
eval_chunk, eval_teacher_logits = make_samples(spec, n_eval, rng, teacher)


class Batch(NamedTuple):
    """TorchRec's ``Batch``: ``dense_features``, ``sparse_features`` (a KJT), ``labels``."""

    dense_features: torch.Tensor
    sparse_features: KeyedJaggedTensor
    labels: torch.Tensor


def batches(chunk, batch_size: int, lo_frac: float = 0.0, hi_frac: float = 1.0):
    """Batches of ``batch_size`` samples (rows ``lo_frac..hi_frac`` of each: this rank's part)."""
    keys, lengths = chunk.keys[0], chunk.lengths[0]  # sample-major keys, lengths (n, slots)
    starts = np.concatenate([[0], np.cumsum(lengths.sum(1))])
    n = len(chunk.labels)
    for b0 in range(0, n - batch_size + 1, batch_size):
        lo, hi = b0 + int(batch_size * lo_frac), b0 + int(batch_size * hi_frac)
        ln = lengths[lo:hi]
        k = keys[starts[lo]:starts[hi]]
        slot = np.repeat(np.tile(np.arange(ln.shape[1]), hi - lo), ln.reshape(-1))
        order = np.argsort(slot, kind="stable")  # KJT order: feature-major, then sample
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=FEATURES, values=torch.from_numpy(k[order]),
            lengths=torch.from_numpy(np.ascontiguousarray(ln.T).reshape(-1)))
        dense = torch.log1p(torch.from_numpy(chunk.dense[lo:hi]))
        yield Batch(dense, kjt, torch.from_numpy(chunk.labels[lo:hi, 0]))


# ---- the model: TorchRec's DLRM (bottom MLP, pairwise dot interaction, top MLP)
def mlp(sizes: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    def __init__(self, ebc: EmbeddingBagCollection, dense_in: int, dim: int) -> None:
        super().__init__()
        self.sparse_arch = ebc
        self.dense_arch = mlp([dense_in, 64, dim])
        f = len(FEATURES) + 1
        self.over_arch = mlp([dim + f * (f - 1) // 2, 128, 64, 1], last_act=False)

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        d = self.dense_arch(dense)                                    # (B, dim)
        pooled = self.sparse_arch(kjt).to_dict()                      # KeyedTensor -> dict
        x = torch.stack([d] + [pooled[f] for f in FEATURES], dim=1)   # (B, F + 1, dim)
        inter = torch.bmm(x, x.transpose(1, 2))
        i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1)
        return self.over_arch(torch.cat([d, inter[:, i, j]], dim=1)).squeeze(1)


class DLRMTrain(nn.Module):
    """TorchRec's train wrapper: ``model(batch) -> (loss, (loss, logits, labels))``."""

    def __init__(self, dlrm: DLRM) -> None:
        super().__init__()
        self.model = dlrm

    def forward(self, batch: Batch):  # noqa: ANN201
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


DIM = 16
torch.manual_seed(0)
tables = [EmbeddingBagConfig(num_embeddings=size, embedding_dim=DIM, name=f"t_{f}",
                             feature_names=[f]) for f, size in zip(FEATURES, SLOT_SIZES)]
fused = {"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": 0.05} \
    if args.fused_params else None
ebc = EmbeddingBagCollection(tables=tables, device=device, fused_params=fused)
if not args.fused_params:
    apply_optimizer_in_backward(torch.optim.Adagrad, ebc.parameters(), {"lr": 0.05})
model: nn.Module = DLRMTrain(DLRM(ebc, dense_in=13, dim=DIM)).to(device)
if world > 1:
    model = DistributedModelParallel(model, device=device)  # tables sharded, dense part DDP
# the tables are trained in the backward (they never get a .grad): Adam sees the dense part
dense_optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

# ---- train: one progress() call per step
pipeline = TrainPipelineSparseDist(model, dense_optimizer, device)
part = (rank / world, (rank + 1) / world)
train_iter = iter(())
model.train()
for step in range(args.iters):
    try:
        loss, _, _ = pipeline.progress(train_iter)
    except StopIteration:  # an epoch is done: start the next one
        train_iter = batches(train_chunk, args.batchsize, *part)
        loss, _, _ = pipeline.progress(train_iter)
    if rank == 0 and (step + 1) % max(1, args.iters // 6) == 0:
        print(f"iter {step + 1}: loss {float(loss):.4f}")

# ---- evaluate: terarec.metrics.AUC (exact; combines all ranks)
model.eval()
auc = AUC()
with torch.no_grad():
    for batch in batches(eval_chunk, args.batchsize, *part):
        _, (_, logits, labels) = model(batch._replace(
            dense_features=batch.dense_features.to(device),
            sparse_features=batch.sparse_features.to(device)))
        auc.update(torch.sigmoid(logits), labels.to(device))
final_auc = auc.compute()
teacher_auc = AUC(distributed=False)
teacher_auc.update(torch.from_numpy(eval_teacher_logits[:, 0]),
                   torch.from_numpy(eval_chunk.labels[:, 0]))
if rank == 0:
    print(f"teacher (best reachable) AUC: {teacher_auc.compute():.4f}")
    print(f"final AUC: {final_auc:.4f} ({world} process{'es' if world > 1 else ''})")
if world > 1:
    dist.destroy_process_group()

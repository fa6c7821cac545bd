"""The reference embedding table: plain, slow PyTorch, the oracle of the fast paths.

Owns nothing the product runs: it exists so every fast implementation (the fused table now,
Triton kernels, sharded and cached tables later) can be tested for equivalence against code
that is easy to read. It uses a Python ``dict`` for key -> row, a dense ``nn.Parameter`` weight
with an ordinary dense autograd gradient, per-row Python loops and float64 arithmetic, and it
spells out HugeCTR's optimizer formulas (reference §5.2) again, independently of
:mod:`terarec.optim.rules`. It shares only the initial values (:mod:`terarec.embedding.init`)
with the fast path. Small tests only.

Update types: Local = hit rows; Global = every used row takes the step, non-hit rows with a
zero gradient, except SGD / AdaGrad / Ftrl whose zero-gradient step leaves rows alone (Ftrl:
terarec's choice - recomputing ``w`` from ``z`` would wipe the initial values); LazyGlobal =
hit rows only, MomentumSGD / Nesterov / RMSProp first replay each skipped zero-gradient step
one by one, Adam follows HugeCTR's ``opt_adam_kernel_lazy``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from terarec.embedding.config import TableConfig
from terarec.embedding.init import init_vectors
from terarec.optim.config import OptimizerConfig
from terarec.sparse import SparseInput

T = torch.Tensor


def _sgd(w: T, s: dict[str, T], g: T, lr: float, c: OptimizerConfig, t: int) -> T:
    return w - lr * g


def _momentum(w: T, s: dict[str, T], g: T, lr: float, c: OptimizerConfig, t: int) -> T:
    s["momentum"] = c.momentum_factor * s["momentum"] - lr * g
    return w + s["momentum"]


def _nesterov(w: T, s: dict[str, T], g: T, lr: float, c: OptimizerConfig, t: int) -> T:
    mu = c.momentum_factor
    a = s["accum"]
    a_new = mu * a - lr * g
    s["accum"] = a_new
    return w - mu * a + (1 + mu) * a_new


def _adam(w: T, s: dict[str, T], g: T, lr: float, c: OptimizerConfig, t: int) -> T:
    s["m"] = c.beta1 * s["m"] + (1 - c.beta1) * g
    s["v"] = c.beta2 * s["v"] + (1 - c.beta2) * g * g
    alpha = lr * math.sqrt(1 - c.beta2**t) / (1 - c.beta1**t)
    return w - alpha * s["m"] / (torch.sqrt(s["v"]) + c.epsilon)


def _adagrad(w: T, s: dict[str, T], g: T, lr: float, c: OptimizerConfig, t: int) -> T:
    s["accum"] = s["accum"] + g * g
    return w - lr * g / (c.epsilon + torch.sqrt(s["accum"]))


def _ftrl(w: T, s: dict[str, T], g: T, lr: float, c: OptimizerConfig, t: int) -> T:
    n, z = s["n"], s["z"]
    n_new = n + g * g
    z = z + g + (torch.sqrt(n) - torch.sqrt(n_new)) * w / lr
    s["n"], s["z"] = n_new, z
    out = torch.zeros_like(w)
    for i in range(w.numel()):
        if abs(float(z[i])) > c.lambda1:
            sign = 1.0 if float(z[i]) > 0 else -1.0
            out[i] = (c.lambda1 * sign - z[i]) / (math.sqrt(float(n_new[i])) / lr + c.lambda2)
    return out


def _rmsprop(w: T, s: dict[str, T], g: T, lr: float, c: OptimizerConfig, t: int) -> T:
    s["v"] = c.beta * s["v"] + (1 - c.beta) * g * g
    return w - lr * g / (torch.sqrt(s["v"]) + c.epsilon)


FORMULAS = {
    "SGD": (_sgd, {}), "MomentumSGD": (_momentum, {"momentum": 0.0}),
    "Nesterov": (_nesterov, {"accum": 0.0}), "Adam": (_adam, {"m": 0.0, "v": 0.0}),
    "AdaGrad": (_adagrad, {"accum": None}), "Ftrl": (_ftrl, {"n": 0.0, "z": 0.0}),
    "RMSProp": (_rmsprop, {"v": 0.0}),
}
NO_ZERO_GRAD_STEP = ("SGD", "AdaGrad", "Ftrl")
REPLAYED_WHEN_LAZY = ("MomentumSGD", "Nesterov", "RMSProp")


class ReferenceEmbedding(nn.Module):
    """Dense-gradient embedding table. Call ``forward``, ``loss.backward()``, then :meth:`step`.

    Args:
        config: the table.
        seed: the init seed (use the fast table's ``seed`` to start from the same rows).
    """

    def __init__(self, config: TableConfig, seed: int) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        cap, dim = config.max_vocabulary_size, config.dim
        self.weight = nn.Parameter(torch.zeros(cap, dim, dtype=torch.float64))
        self.key_to_row: dict[int, int] = {}
        self.row_slots: list[int] = []
        self.formula, init = FORMULAS[config.optimizer.type]
        acc0 = config.optimizer.initial_accu_value
        self.states = [
            {n: torch.full((dim,), acc0 if v is None else v, dtype=torch.float64)
             for n, v in init.items()} for _ in range(cap)
        ]
        self.last_step = [0] * cap
        self.t = 0
        self.lr = 0.0
        self.scaler = 1.0
        self.hits: set[int] = set()
        self._bounds = torch.tensor(config.slot_init_bounds(), dtype=torch.float64)

    def _row(self, key: int, slot: int) -> int:
        if key not in self.key_to_row:
            row = len(self.key_to_row)
            if row >= self.config.max_vocabulary_size:
                raise RuntimeError("reference table full")
            self.key_to_row[key] = row
            self.row_slots.append(slot)
            vec = init_vectors(torch.tensor([key]), torch.tensor([slot]), self._bounds,
                               self.config.dim, self.seed, torch.float32)
            with torch.no_grad():
                self.weight[row] = vec[0].double()
        return self.key_to_row[key]

    def forward(self, sparse: SparseInput) -> T:
        keys = sparse.keys.tolist()
        offsets = sparse.offsets.tolist()
        s_num = sparse.slot_num
        pooled = []
        for r in range(len(offsets) - 1):
            rows = [self._row(keys[i], r % s_num) for i in range(offsets[r], offsets[r + 1])]
            self.hits.update(rows)
            if not rows:
                pooled.append(torch.zeros(self.config.dim, dtype=torch.float64))
                continue
            vec = self.weight[torch.tensor(rows)].sum(0)
            if self.config.combiner == "mean":
                vec = vec / len(rows)
            pooled.append(vec)
        return torch.stack(pooled).view(sparse.batch_size, s_num, self.config.dim)

    def _apply(self, row: int, g: T) -> None:
        with torch.no_grad():
            self.weight[row] = self.formula(self.weight[row].clone(), self.states[row], g,
                                            self.lr, self.config.optimizer, self.t)

    def _lazy_adam(self, row: int, g: T) -> None:
        c = self.config.optimizer
        st = self.states[row]
        p = max(self.last_step[row], 1)
        s = self.t - p
        alpha = (self.lr / (1 - c.beta1) * math.sqrt(1 - c.beta2**p) / (1 - c.beta1**p)
                 * (1 - c.beta1**s))
        with torch.no_grad():
            self.weight[row] -= alpha * st["m"] / (torch.sqrt(st["v"]) + c.epsilon)
        st["m"] = c.beta1**s * st["m"] + (1 - c.beta1) * g
        st["v"] = c.beta2**s * st["v"] + (1 - c.beta2) * g * g

    def step(self) -> None:
        """Apply the optimizer to the dense gradient of the last backward, then clear it."""
        self.t += 1
        opt = self.config.optimizer
        grad = self.weight.grad
        if grad is None:
            grad = torch.zeros_like(self.weight)
        grad = grad.detach() / self.scaler
        zero = torch.zeros(self.config.dim, dtype=torch.float64)
        if opt.update_type == "Global":
            for row in range(len(self.key_to_row)):
                if row in self.hits:
                    self._apply(row, grad[row])
                elif opt.type not in NO_ZERO_GRAD_STEP:
                    self._apply(row, zero)
        elif opt.update_type == "Local":
            for row in sorted(self.hits):
                self._apply(row, grad[row])
        else:
            for row in sorted(self.hits):
                if opt.type == "Adam":
                    self._lazy_adam(row, grad[row])
                else:
                    if opt.type in REPLAYED_WHEN_LAZY:
                        for _ in range(max(self.t - 1 - self.last_step[row], 0)):
                            self._apply(row, zero)
                    self._apply(row, grad[row])
                self.last_step[row] = self.t
        self.weight.grad = None
        self.hits.clear()

    def vectors_of(self, keys: list[int]) -> T:
        """Current vectors of ``keys`` (must be known)."""
        return self.weight.detach()[torch.tensor([self.key_to_row[k] for k in keys])]

    def state_of(self, keys: list[int], name: str) -> T:
        return torch.stack([self.states[self.key_to_row[k]][name] for k in keys])

"""One training / evaluation step: embeddings -> dense network -> loss -> fused updates.

The engine owns the modules and optimizers of a compiled model and nothing about files,
readers or logging. The embedding tables apply their sparse optimizer update inside the
backward pass (no dense table gradient exists); the dense optimizer steps afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from terarec.data.batch import Batch
from terarec.errors import ConfigError
from terarec.graph.builder import DenseNetwork, NetworkOutput
from terarec.training.precision import PrecisionConfig


class Engine(nn.Module):
    """Runs steps for a compiled model.

    Args:
        network: the dense layers.
        tables: embedding tables keyed by their output tensor name (add order).
        table_inputs: ``{table output name: sparse input name}``.
        dense_optimizer: a ``torch.optim.Optimizer`` over ``network.dense_weights()`` (or None
            when the model has no dense weights).
        precision: mixed precision / TF32 / loss scaling.
        device: where the step runs.
    """

    def __init__(
        self,
        network: DenseNetwork,
        tables: dict[str, nn.Module],
        table_inputs: dict[str, str],
        dense_optimizer: torch.optim.Optimizer | None,
        precision: PrecisionConfig,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.network = network
        self.tables = nn.ModuleDict(tables)
        self.table_inputs = dict(table_inputs)
        self.dense_optimizer = dense_optimizer
        self.precision = precision
        self.device = device
        self.lr = 0.0
        self.dense_frozen = False
        # Hook run on dense gradients before the optimizer step (data-parallel all-reduce).
        self.grad_sync: Callable[[list[torch.Tensor]], None] | None = None
        # Hook mapping this process's loss to the reported one (data parallel: global mean).
        self.loss_sync: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.last_train: NetworkOutput | None = None
        self.last_eval: NetworkOutput | None = None
        precision.apply_global(device)

    # ------------------------------------------------------------------------ helpers
    def set_learning_rate(self, lr: float) -> None:
        self.lr = float(lr)
        if self.dense_optimizer is not None:
            for group in self.dense_optimizer.param_groups:
                group["lr"] = self.lr
        for table in self.tables.values():
            table.set_learning_rate(self.lr)

    def embed(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = {}
        for name, table in self.tables.items():
            input_name = self.table_inputs[name]
            if input_name not in batch.sparse:
                raise ConfigError(f"SparseEmbedding {name!r}.bottom_name",
                                  f"a sparse input of the batch {sorted(batch.sparse)}",
                                  input_name)
            out[name] = table(batch.sparse[input_name])
        return out

    def forward_batch(self, batch: Batch, compute_loss: bool = True) -> NetworkOutput:
        batch = batch.to(self.device, non_blocking=True)
        with self.precision.autocast(self.device):
            embeddings = self.embed(batch)
            return self.network(batch.dense, batch.labels, embeddings, compute_loss=compute_loss)

    # ------------------------------------------------------------------------ steps
    def train_step(self, batch: Batch) -> torch.Tensor:
        """Forward, backward (sparse updates fused), dense update. Returns the loss (0-dim)."""
        self.train()
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad(set_to_none=True)
        out = self.forward_batch(batch)
        loss = out.loss
        assert loss is not None  # noqa: S101 - compute_loss=True always sets it
        scaled = loss * self.precision.scaler if self.precision.scaler != 1.0 else loss
        if scaled.requires_grad:
            scaled.backward()
        if self.dense_optimizer is not None and not self.dense_frozen:
            grads = [p.grad for p in self.network.dense_weights() if p.grad is not None]
            if self.grad_sync is not None:
                self.grad_sync(grads)
            self.dense_optimizer.step()
        self.last_train = out
        if self.loss_sync is not None:
            return self.loss_sync(loss.detach())
        return loss.detach()

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> NetworkOutput:
        self.eval()
        out = self.forward_batch(batch)
        self.last_eval = out
        return out

    @torch.no_grad()
    def predict_step(self, batch: Batch) -> torch.Tensor:
        self.eval()
        out = self.forward_batch(batch, compute_loss=False)
        assert out.predictions is not None  # noqa: S101 - every graph ends in a loss layer
        return out.predictions

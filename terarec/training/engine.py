"""One training / evaluation step: embeddings -> dense network -> loss -> fused updates.

The engine owns the modules and optimizers of a compiled model and nothing about files,
readers or logging. The embedding tables apply their sparse optimizer update inside the
backward pass (no dense table gradient exists); the dense optimizer steps afterwards.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

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
        # CUDA graph of the dense forward+backward of a training step (static shapes, CUDA,
        # fused kernels on): one replay instead of ~150 launches. Embedding lookups and their
        # fused updates stay eager around it. Model.compile sets it from use_cuda_graph.
        self.use_cuda_graph = False
        self._graph: dict[str, Any] = {}
        # The whole step (lookups, fused sparse updates, dense optimizer) as one graph where it
        # applies (terarec.training.step_graph); the dense-only graph above otherwise.
        from terarec.training.step_graph import StepGraph

        self.step_graph = StepGraph(self, self._forward_for_capture)
        precision.apply_global(device)

    # ------------------------------------------------------------------------ helpers
    def set_learning_rate(self, lr: float) -> None:
        self.lr = float(lr)
        if self.dense_optimizer is not None:
            for group in self.dense_optimizer.param_groups:
                group["lr"] = self.lr
        for table in self.tables.values():
            table.set_learning_rate(self.lr)
        self.step_graph.set_learning_rate(self.lr)

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

    def _forward_for_capture(self, batch: Batch) -> NetworkOutput:
        """The step's forward as the whole-step graph records it (autocast without its cast
        cache, which a CUDA graph cannot hold)."""
        amp = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
               if self.precision.use_mixed_precision else contextlib.nullcontext())
        with amp:
            return self.network(batch.dense, batch.labels, self.embed(batch))

    def _graphed_dense(self, batch: Batch, embeddings: dict[str, torch.Tensor],
                       ) -> Callable[..., tuple[torch.Tensor, ...]] | None:
        """The captured dense step for these shapes (built on first use), else None."""
        from terarec.kernels import backend_for

        # grad_sync (the data-parallel all-reduce) runs eagerly on the gradients the graphed
        # backward accumulated, so a data-parallel step keeps the dense-only graph.
        if self.device.type != "cuda" or self.dense_frozen \
                or backend_for(batch.dense) != "triton":
            return None
        key = (tuple(batch.dense.shape), tuple(batch.labels.shape),
               tuple((n, tuple(e.shape), e.dtype, e.requires_grad)
                     for n, e in embeddings.items()))
        if self._graph:
            return self._graph["fn"] if self._graph["key"] == key else None
        # A live autograd graph of an earlier eager step (held by last_train) keeps the
        # parameters' AccumulateGrad nodes on the default stream, which breaks the capture.
        self.last_train = None
        sample = (batch.dense.detach().clone(), batch.labels.detach().clone(),
                  *[e.detach().clone().requires_grad_(e.requires_grad)
                    for e in embeddings.values()])
        # The capture's warm-up runs the network three times on the sample: buffers a forward
        # updates (BatchNorm statistics, a custom layer's counters) get their values back.
        buffers = [(b, b.detach().clone()) for b in self.network.buffers()]
        try:
            fn = torch.cuda.make_graphed_callables(_DenseStep(self.network, list(embeddings)),
                                                   sample, allow_unused_input=True)
        except Exception as exc:  # noqa: BLE001 - any capture failure: stay eager
            warnings.warn(f"CUDA graph capture of the dense step failed ({exc}); "
                          "training continues without CUDA graphs", stacklevel=3)
            self.use_cuda_graph = False
            return None
        finally:
            with torch.no_grad():
                for buf, value in buffers:
                    buf.copy_(value)
        self._graph = {"key": key, "fn": fn}
        return fn

    def _forward_train(self, batch: Batch) -> NetworkOutput:
        if not self.use_cuda_graph:
            return self.forward_batch(batch)
        batch = batch.to(self.device, non_blocking=True)
        amp = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
               if self.precision.use_mixed_precision and self.device.type == "cuda"
               else contextlib.nullcontext())
        with amp:
            embeddings = self.embed(batch)
            fn = self._graphed_dense(batch, embeddings)
            if fn is None:
                return self.network(batch.dense, batch.labels, embeddings)
            loss, preds, labels, *parts = fn(batch.dense, batch.labels, *embeddings.values())
        # The graph's outputs are static buffers: the losses are copied (the step's return
        # value), predictions are the last step's until the next replay. Intermediate tensors
        # are not kept under a CUDA graph (check_out_tensor says so).
        losses = {name: part.detach().clone()
                  for name, part in zip(self.network.loss_tops, parts)}
        return NetworkOutput({self.network.schema.dense_name: batch.dense, **embeddings},
                             losses=losses, loss=loss.clone(), predictions=preds, labels=labels)

    def reset_cuda_graph(self) -> None:
        """Forget the captured step (after freezing/unfreezing or changing the network)."""
        self._graph = {}
        self.step_graph.reset()

    # ------------------------------------------------------------------------ steps
    def train_step(self, batch: Batch) -> torch.Tensor:
        """Forward, backward (sparse updates fused), dense update. Returns the loss (0-dim)."""
        self.train()
        if self.use_cuda_graph:
            loss = self.step_graph.step(batch.to(self.device, non_blocking=True))
            if loss is not None:
                self.last_train = self.step_graph.out
                return loss
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad(set_to_none=True)
        out = self._forward_train(batch)
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


class _DenseStep(nn.Module):
    """The dense network as a function of tensors only (what a CUDA graph captures)."""

    def __init__(self, network: DenseNetwork, names: list[str]) -> None:
        super().__init__()
        self.network = network
        self.names = names

    def forward(self, dense: torch.Tensor, labels: torch.Tensor,
                *embs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(dense, labels, dict(zip(self.names, embs)))
        assert out.loss is not None and out.predictions is not None  # noqa: S101
        assert out.labels is not None  # noqa: S101
        parts = [out.losses[name].detach() for name in self.network.loss_tops]
        return (out.loss, out.predictions.detach(), out.labels.detach(), *parts)

"""TorchRec's ``TrainPipelineSparseDist``: one training step per ``progress`` call, with the
next batch fetched, moved and (sharded tables) its key exchange issued ahead.

Owns the step loop a TorchRec user writes as::

    pipeline = TrainPipelineSparseDist(model, optimizer, device)
    while True:
        try:
            output = pipeline.progress(dataloader_iter)
        except StopIteration:
            break

TorchRec's convention: ``model(batch)`` returns ``(losses, output)``; in training mode each
``progress`` zeroes the dense optimizer's gradients, runs the forward, backpropagates
``torch.sum(losses, dim=0)`` (the fused sparse optimizers update the tables in that backward)
and steps the dense optimizer; it returns ``output``. In eval mode it runs the forward only.
``StopIteration`` is raised by the call after the iterator's last batch was trained (a new
iterator may then be passed to start again).

Overlap: before the current step the pipeline reads the iterator's next batch and moves it to
``device`` (a plain copy-ahead). With ``overlap_input_dist`` (default: terarec's switch
``TERAREC_OVERLAP_INPUT_DIST``, :mod:`terarec.distributed.overlap`) and a model under
:class:`~terarec.torchrec.model_parallel.DistributedModelParallel` whose collections can
prefetch (routed tables), right after the current forward it converts the next batch's KJT for
every collection (:meth:`EmbeddingBagCollection.stage`) and issues that batch's ``input_dist``
key all-to-all without waiting, so the keys travel during the current backward and dense
all-reduce; the next forward waits on it. Only data moves ahead (results unchanged). This needs
one ``KeyedJaggedTensor`` per batch (the batch itself, its ``sparse_features``, or the one KJT
of a tuple / list / dict batch) that reaches the collections unchanged; where a forward does not
use the staged KJT the pending exchange is dropped and the pipeline stops issuing ahead
(:attr:`overlap_active`). Every rank must see the same number of batches (as with any
collective).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from terarec.distributed import overlap
from terarec.errors import ConfigError
from terarec.torchrec.embedding_bag import EmbeddingBagCollection
from terarec.torchrec.jagged import KeyedJaggedTensor

_END = object()


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` on ``device``: tensors, KJTs and objects with ``.to(device)``; tuples, lists
    and dicts element by element; anything else as is."""
    if isinstance(batch, (tuple, list)):
        moved = [to_device(b, device, non_blocking) for b in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (torch.Tensor, KeyedJaggedTensor)):
        return batch.to(device, non_blocking=non_blocking)
    to = getattr(batch, "to", None)
    return to(device) if callable(to) else batch


def batch_kjts(batch: Any) -> list[KeyedJaggedTensor]:
    """The KJTs of ``batch``: itself, its ``sparse_features``, or those among the items of a
    tuple / list / dict (one level)."""
    if isinstance(batch, KeyedJaggedTensor):
        return [batch]
    sf = getattr(batch, "sparse_features", None)
    if isinstance(sf, KeyedJaggedTensor):
        return [sf]
    items = batch.values() if isinstance(batch, dict) else batch \
        if isinstance(batch, (tuple, list)) else []
    return [b for b in items if isinstance(b, KeyedJaggedTensor)]


class TrainPipelineSparseDist:
    """TorchRec's ``TrainPipelineSparseDist(model, optimizer, device)`` (see the module
    docstring).

    Args:
        model: ``model(batch) -> (losses, output)``; a plain model or a
            ``DistributedModelParallel``.
        optimizer: the dense optimizer (``None``: no dense step).
        device: where batches are moved.
        overlap_input_dist: issue the next batch's key exchange ahead (sharded collections
            that support it); default ``TERAREC_OVERLAP_INPUT_DIST``.

    Attributes:
        issued_ahead: how many batches had their key exchange issued ahead.
        overlap_active: whether it still issues ahead (off after a forward that did not use a
            staged KJT).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 device: torch.device | str, overlap_input_dist: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError("TrainPipelineSparseDist(model)", "an nn.Module",
                              type(model).__name__)
        self._model = model
        self._optimizer = optimizer
        self._device = torch.device(device)
        self._ebcs = [m for m in model.modules() if isinstance(m, EmbeddingBagCollection)]
        self._next: Any = None
        self._started = False
        self.overlap_active = overlap.enabled() if overlap_input_dist is None \
            else bool(overlap_input_dist)
        self.issued_ahead = 0

    def _fetch(self, dataloader_iter: Iterator[Any]) -> Any:
        try:
            batch = next(dataloader_iter)
        except StopIteration:
            return _END
        return to_device(batch, self._device, non_blocking=self._device.type == "cuda")

    def _collections(self) -> list[tuple[EmbeddingBagCollection, Any]]:
        """The sharded collections that can issue a key exchange ahead."""
        out = []
        for e in self._ebcs:
            coll = getattr(e, "sharded", None)
            if coll is not None and coll.can_prefetch:
                out.append((e, coll))
        return out

    def _issue_ahead(self, batch: Any) -> None:
        if not self.overlap_active:
            return
        kjts = batch_kjts(batch)
        targets = self._collections()
        if len(kjts) != 1 or not targets:
            return
        for ebc, coll in targets:
            sparse, _ = ebc.stage(kjts[0])
            coll.prefetch(sparse)
        self.issued_ahead += 1

    def _check_consumed(self) -> None:
        """A staged KJT the forward did not read: drop its exchange, stop issuing ahead."""
        for ebc, coll in self._collections():
            if ebc.staged is not None:
                ebc.drop_staged()
                coll.drop_pending()
                self.overlap_active = False

    def progress(self, dataloader_iter: Iterator[Any]) -> Any:
        """One step on the next batch; returns the model's ``output`` (``StopIteration`` when
        the iterator has no batch left)."""
        if not self._started:
            self._next = self._fetch(dataloader_iter)
            self._started = True
        cur = self._next
        if cur is _END:
            self._started = False  # a new iterator starts over
            self._next = None
            raise StopIteration
        self._next = self._fetch(dataloader_iter)
        training = self._model.training
        if training and self._optimizer is not None:
            self._optimizer.zero_grad()
        result = self._model(cur)
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise ConfigError("TrainPipelineSparseDist: model(batch)", "a (losses, output) "
                              "pair (TorchRec's convention)", type(result).__name__)
        losses, output = result
        self._check_consumed()
        if training and self._next is not _END:
            self._issue_ahead(self._next)
        if training:
            torch.sum(losses, dim=0).backward()
            if self._optimizer is not None:
                self._optimizer.step()
        return output

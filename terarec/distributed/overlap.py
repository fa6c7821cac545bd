"""Overlap of the next batch's key exchange with the current batch's compute.

Switch: ``TERAREC_OVERLAP_INPUT_DIST=1`` (opt-in until it is measured on NCCL; off, the step
runs exactly the code it ran before), read when the ``Model`` is built, the same on every rank. With
it on, a data-parallel ``Model.train`` step whose batch came from the train reader
does, right after its embeddings' ``output_dist`` (the end of the collection's forward): read
the next batch (one batch of look-ahead, :class:`Lookahead`), plan its requests and issue its
``input_dist`` keys all-to-all without waiting
(:meth:`~terarec.distributed.collection.ShardedEmbeddingCollection.prefetch`), so that the
keys travel while the current batch's dense forward / backward, its embedding-gradient
exchange and its dense all-reduce run. The next step's ``input_dist`` then waits on that
exchange instead of issuing it. What moves ahead is pure data movement: lookups, row inserts
and updates stay in their step, so results are unchanged (tested against one process).

* A custom loop over a :class:`~terarec.distributed.collection.ShardedEmbeddingCollection`
  calls its ``prefetch(next inputs)`` after a forward itself (every rank at the same point).
* Routed tables through :class:`~terarec.distributed.fused.FusedLookup` (row-wise,
  table-wise): the small counts all-to-all (and its host read) runs at the pre-issue point; the
  keys all-to-all is asynchronous. A fused group holding replicated tables is not pre-issued
  (their ``input_dist`` inserts rows, which must stay after the previous update).
* The fixed-size slot exchange (:mod:`~terarec.distributed.slot_exchange`): its keys
  all-to-all is asynchronous (no counts, no host synchronisation).
* A batch passed to ``Model.train(batch)`` by hand has no look-ahead; a script that knows its
  next batch says so with :func:`~terarec.distributed.model_hooks.announce_next_batch`
  (every rank alike), and that batch's keys are issued ahead the same way.
* A pre-issued exchange is used only by a forward whose input is the very batch it was issued
  for (same key / offset tensors, unchanged since, same slot count and rank batch sizes:
  :func:`input_key` / :func:`same_input`); any other forward (evaluation, a batch passed to
  ``Model.train`` by hand) takes the synchronous path and leaves it for its batch. Every rank
  pre-issues at the same points (each reads the same global batches; the epoch's end, where no
  next batch exists, is seen by all ranks alike), so collectives stay matched.
* CUDA graphs: with ``use_cuda_graph`` a data-parallel step captures / replays the dense
  forward+backward only (embeddings stay eager), and the overlap runs around it (the keys
  all-to-all is on NCCL's stream while the graph replays). Off when the whole step may be one
  graph (``TERAREC_DP_STEP_GRAPH=1``: its replays run no ``embed``) and inside any capture.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from terarec.sparse import SparseInput

ENV = "TERAREC_OVERLAP_INPUT_DIST"

InputKey = tuple[torch.Tensor, torch.Tensor, int, int, int, "tuple[int, ...] | None"]


def enabled() -> bool:
    """``TERAREC_OVERLAP_INPUT_DIST`` (off unless set to something other than ``0``: gloo
    tests equal one process, the NCCL path has not run on GPUs yet)."""
    return os.environ.get(ENV, "0").strip() not in ("", "0")


def input_key(sparse: SparseInput) -> InputKey:
    """What ties a pre-issued exchange to one input (holds its tensors, so the identity of a
    key tensor is never reused while the exchange waits)."""
    return (sparse.keys, sparse.offsets, sparse.keys._version, sparse.offsets._version,
            sparse.slot_num, sparse.rank_batch_sizes)


def same_input(key: InputKey, sparse: SparseInput) -> bool:
    keys, offsets, kv, ov, slot_num, sizes = key
    return (sparse.keys is keys and sparse.offsets is offsets
            and sparse.keys._version == kv and sparse.offsets._version == ov
            and sparse.slot_num == slot_num and sparse.rank_batch_sizes == sizes)


def capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def whole_step_graph(engine: Any) -> bool:
    """Whether ``engine``'s data-parallel steps may replay one whole-step CUDA graph
    (``use_cuda_graph`` on CUDA with ``TERAREC_DP_STEP_GRAPH=1``, see
    :mod:`terarec.training.step_graph`): a replay runs no ``embed``, so nothing is issued ahead
    there."""
    return (bool(getattr(engine, "use_cuda_graph", False))
            and torch.device(engine.device).type == "cuda"
            and os.environ.get("TERAREC_DP_STEP_GRAPH", "0") == "1")


_EMPTY = object()


class Lookahead:
    """One batch of look-ahead on a model's train reader (a ``ReaderSlot``).

    Installs itself over the slot's ``next_batch`` / ``close`` / ``start`` / ``is_started`` /
    ``ready_to_collect`` (instance attributes): :meth:`peek` reads the next batch early and
    ``next_batch`` hands it out first, so the reader's order, its end (None) and its errors reach
    the caller exactly as before (an error met by :meth:`peek` is raised by the next
    ``next_batch``). ``close`` (also ``restart`` / ``set_source`` / an epoch's start) drops the
    held batch with the reader's threads. :attr:`last` is the batch ``next_batch`` handed out
    last (a step on it may look ahead).
    """

    def __init__(self, slot: Any) -> None:
        self.slot = slot
        self._read = slot.next_batch
        self._close = slot.close
        self._is_started = slot.is_started
        self._ready = slot.ready_to_collect
        self._start = slot.start
        self.held: Any = _EMPTY
        self.error: BaseException | None = None
        self.last: Any = None
        slot.next_batch = self.next_batch
        slot.close = self.close
        slot.is_started = self.is_started
        slot.ready_to_collect = self.ready_to_collect
        slot.start = self.start

    def next_batch(self) -> Any:
        if self.held is not _EMPTY:
            batch, self.held = self.held, _EMPTY
        elif self.error is not None:
            exc, self.error = self.error, None
            self.last = None
            raise exc
        else:
            batch = self._read()
        self.last = batch
        return batch

    def peek(self) -> Any:
        """The batch the next ``next_batch`` returns (None: the source ends there, or reading
        it failed; the failure is raised by that ``next_batch``)."""
        if self.held is _EMPTY and self.error is None:
            try:
                self.held = self._read()
            except Exception as exc:  # noqa: BLE001 - raised by the next next_batch
                self.error = exc
        return None if self.held is _EMPTY else self.held

    def close(self) -> None:
        self.held = _EMPTY
        self.error = None
        self._close()

    def start(self) -> None:
        if self.held is _EMPTY and self.error is None:  # else: started, a batch is held
            self._start()

    def is_started(self) -> bool:
        return self.held is not _EMPTY or self.error is not None or self._is_started()

    def ready_to_collect(self) -> bool:
        return self.held is not _EMPTY or self.error is not None or self._ready()

"""``Prefetcher``: read ahead on background threads and stage batches on the device.

Worker threads pull batches from the reader's iterator (in order, one at a time), and on a CUDA
target pin them (a no-op for batches the :class:`~terarec.data.readers.base.Reader` already
assembled in pinned memory) and copy them to the GPU on a side stream of their own; the copy's
completion is recorded as an event. The consumer makes its current stream wait for that event and
marks the tensors as used by it (``record_stream``), so the copy of batch ``i+1`` overlaps the
compute on batch ``i`` and the caching allocator never reuses their memory early. On CPU batches
pass through (decoded ahead by the worker). At most ``depth + num_threads`` batches are held.

Order is preserved. An exception raised in a worker (e.g. a :class:`~terarec.errors.DataError`
naming file, row and field) is re-raised in the consumer: the same object, original type and
message, after the batches that preceded it. ``close()`` (or leaving a ``with`` block, finishing /
abandoning the iteration, garbage collection, interpreter exit) stops and joins the workers and
closes the underlying iterator; the threads are daemons and never block interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from terarec.data.batch import Batch

_END = object()
_LIVE: weakref.WeakSet[Prefetcher] = weakref.WeakSet()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def batch_tensors(batch: Batch) -> list[torch.Tensor]:
    """Every tensor of ``batch`` (labels, dense, each sparse input's keys and offsets)."""
    out = [batch.labels, batch.dense]
    for sp in batch.sparse.values():
        out += [sp.keys, sp.offsets]
    return out


class Prefetcher:
    """Iterate ``reader`` with up to ``depth`` batches read ahead, delivered on ``device``.

    Args:
        reader: any iterable of :class:`Batch` (a ``Reader``, a generator, ...).
        device: where batches are delivered; CUDA: pinned host memory + side-stream copies.
        depth: batches kept ready beyond those in the workers' hands.
        num_threads: worker threads (default ``min(2, cores)``). A ``Reader`` decodes and
            assembles on its own ``num_workers`` threads; one prefetch thread is enough for it.
    """

    def __init__(self, reader: Iterable[Batch], device: torch.device | str = "cpu", depth: int = 2,
                 num_threads: int | None = None) -> None:
        self.reader = reader
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.depth = max(1, depth)
        self.num_threads = max(1, num_threads or min(2, os.cpu_count() or 1))
        self._cuda = self.device.type == "cuda"
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._it: Iterator[Batch] | None = None
        _LIVE.add(self)

    # -- workers --------------------------------------------------------------------------
    def _start(self) -> None:
        self._it = iter(self.reader)
        self._lock = threading.Lock()
        self._seq = 0
        self._done = False
        self._q: queue.Queue = queue.Queue(maxsize=self.depth + self.num_threads)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"terarec-prefetch-{i}")
                         for i in range(self.num_threads)]
        for t in self._threads:
            t.start()

    def _put(self, item: tuple[int, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        stream = None
        if self._cuda:
            try:
                torch.cuda.set_device(self.device)
                stream = torch.cuda.Stream(device=self.device)
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                with self._lock:
                    seq = self._seq
                    self._seq += 1
                self._put((seq, _Failure(exc)))
                return
        while not self._stop.is_set():
            with self._lock:
                if self._done:
                    return
                seq = self._seq
                self._seq += 1
                try:
                    batch = next(self._it)  # type: ignore[arg-type]
                except StopIteration:
                    self._done = True
                    self._put((seq, _END))
                    return
                except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                    self._done = True
                    self._put((seq, _Failure(exc)))
                    return
            try:
                item: object = self._stage(batch, stream) if stream is not None else batch
            except BaseException as exc:  # noqa: BLE001
                with self._lock:
                    self._done = True
                self._put((seq, _Failure(exc)))
                return
            if not self._put((seq, item)):
                return

    def _stage(self, batch: Batch, stream: Any) -> tuple[Batch, Any, Batch]:
        """Pin (unless already pinned) and copy to the device on ``stream``; returns the device
        batch, the event marking the copy's end and the pinned source (kept alive until then)."""
        host = batch.pin_memory()
        with torch.cuda.stream(stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return dev, event, host

    # -- consumer -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        self.close()
        self._start()
        want, held = 0, {}
        try:
            while True:
                while want not in held:
                    try:
                        seq, item = self._q.get(timeout=1.0)
                    except queue.Empty:
                        if not any(t.is_alive() for t in self._threads):
                            raise RuntimeError("terarec prefetch threads ended without a "
                                               "result") from None
                        continue
                    held[seq] = item
                item = held.pop(want)
                want += 1
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                if self._cuda:
                    dev, event, _host = item  # type: ignore[misc]
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for t in batch_tensors(dev):
                        t.record_stream(current)
                    yield dev
                else:
                    yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        """Stop and join the workers and close the underlying iterator (idempotent)."""
        self._stop.set()
        threads, self._threads = self._threads, []
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=10)
        if self._it is not None and not any(t.is_alive() for t in threads):
            it, self._it = self._it, None
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


#: GIL switch interval (s) while readers run in background threads; see ``share_gil``.
SWITCH_INTERVAL = float(os.environ.get("TERAREC_SWITCH_INTERVAL", "0.0005"))


def share_gil() -> None:
    """Lower the interpreter's GIL switch interval to ``SWITCH_INTERVAL`` (never raises it).

    Reader threads release the GIL inside numpy / pyarrow many times per batch and must get it
    back after each call. With the default 5 ms interval and a training thread that keeps the
    GIL busy (PyTorch op dispatch), every reacquisition waits up to 5 ms: measured here, a
    Parquet pass that takes 0.45 s alone took 14 s next to a pure-Python thread, and 0.63 s
    with a 0.5 ms interval. ``TERAREC_SWITCH_INTERVAL=0`` leaves the interval alone.
    """
    import sys

    if SWITCH_INTERVAL > 0 and sys.getswitchinterval() > SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)


def live_threads() -> list[threading.Thread]:
    """Running prefetch / reader worker threads (for leak checks)."""
    return [t for t in threading.enumerate()
            if t.name.startswith(("terarec-prefetch", "terarec-decode", "terarec-batch"))]


@atexit.register
def _stop_all() -> None:
    """At exit: tell every worker to stop (they are daemons; nothing waits for them)."""
    for p in list(_LIVE):
        p._stop.set()

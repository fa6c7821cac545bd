"""``Prefetcher``: decode ahead on background threads and stage batches on the device.

Worker threads pull batches from the reader's iterator (in order), pin them (CUDA targets only)
and the consumer copies them with ``non_blocking=True`` to the device; on CPU batches pass through.
Order is preserved. An exception in a worker is re-raised in the consumer with the original type
and message. ``close()`` (or leaving a ``with`` block, or garbage collection) stops the workers.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator

import torch

from terarec.data.batch import Batch

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher:
    """Iterate ``reader`` with ``depth`` batches decoded ahead, delivered on ``device``."""

    def __init__(self, reader: Iterable[Batch], device: torch.device | str = "cpu", depth: int = 2,
                 num_threads: int | None = None) -> None:
        self.reader = reader
        self.device = torch.device(device)
        self.depth = max(1, depth)
        self.num_threads = max(1, num_threads or min(2, os.cpu_count() or 1))
        self._pin = self.device.type == "cuda"
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _start(self) -> None:
        self._it = iter(self.reader)
        self._lock = threading.Lock()
        self._seq = 0
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
        while not self._stop.is_set():
            with self._lock:
                seq = self._seq
                self._seq += 1
                try:
                    batch = next(self._it)
                except StopIteration:
                    self._put((seq, _END))
                    return
                except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                    self._put((seq, _Failure(exc)))
                    return
            try:
                if self._pin:
                    batch = batch.pin_memory()
            except BaseException as exc:  # noqa: BLE001
                self._put((seq, _Failure(exc)))
                return
            if not self._put((seq, batch)):
                return

    def __iter__(self) -> Iterator[Batch]:
        self.close()
        self._start()
        want, held = 0, {}
        try:
            while True:
                while want not in held:
                    seq, item = self._q.get()
                    held[seq] = item
                item = held.pop(want)
                want += 1
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item.to(self.device, non_blocking=True) if self.device.type != "cpu" \
                    else item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

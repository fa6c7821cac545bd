"""Dynamic batching: requests arriving close together run as one batch.

Owns :class:`DynamicBatcher`, an asyncio queue drained by one worker task. The worker takes the
first waiting request, then keeps collecting until ``max_batch_size`` samples are gathered or
``max_delay_s`` has passed since that first request, merges the CSR batches
(:func:`terarec.inference.csr.merge`), runs the model in a worker thread and hands every caller
its own rows back. A request larger than ``max_batch_size`` runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import numpy as np

from terarec.inference.csr import CsrBatch, merge

RunFn = Callable[[CsrBatch], np.ndarray]


class DynamicBatcher:
    """Queue + worker turning single requests into batches.

    Args:
        run: ``run(batch) -> np.ndarray (B, label_dim)`` (called in a thread).
        max_batch_size: most samples merged into one call.
        max_delay_s: longest time the first request of a batch waits for company.
        on_batch: optional callback ``(num_samples, num_requests)`` for metrics.
    """

    def __init__(self, run: RunFn, max_batch_size: int, max_delay_s: float,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.run = run
        self.max_batch_size = max(int(max_batch_size), 1)
        self.max_delay_s = max(float(max_delay_s), 0.0)
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[CsrBatch, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._carry: tuple[CsrBatch, asyncio.Future[np.ndarray]] | None = None

    async def submit(self, batch: CsrBatch) -> np.ndarray:
        """Queue ``batch`` and wait for its ``(B, label_dim)`` result."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._worker())
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((batch, fut))
        return await fut

    async def _collect(self) -> list[tuple[CsrBatch, asyncio.Future[np.ndarray]]]:
        assert self._queue is not None  # noqa: S101 - set by submit
        first, self._carry = self._carry, None
        items = [first if first is not None else await self._queue.get()]
        total = items[0][0].batch_size
        deadline = asyncio.get_running_loop().time() + self.max_delay_s
        while total < self.max_batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            try:
                item = (self._queue.get_nowait() if timeout <= 0 else
                        await asyncio.wait_for(self._queue.get(), timeout))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if total + item[0].batch_size > self.max_batch_size:
                self._carry = item  # does not fit: opens the next batch
                break
            items.append(item)
            total += item[0].batch_size
        return items

    async def _worker(self) -> None:
        while True:
            items = await self._collect()
            batches = [b for b, _ in items]
            try:
                out = await asyncio.to_thread(self.run, merge(batches))
            except Exception as exc:  # the model failed: every caller gets the error
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(b.batch_size for b in batches), len(items))
            lo = 0
            for b, fut in items:
                if not fut.done():
                    fut.set_result(out[lo:lo + b.batch_size])
                lo += b.batch_size

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task

"""The train / eval reader of a ``Model`` (HugeCTR's ``get_data_reader_train/eval`` objects).

Builds a terarec reader from ``DataReaderParams`` + the graph's ``Input`` lazily, feeds
batches through a background :class:`~terarec.data.loader.Prefetcher`, and implements repeat vs
epoch mode.

The reader decodes and assembles batches on ``DataReaderParams.num_workers`` threads; the
prefetcher's thread keeps ``PREFETCH_DEPTH`` batches ready. On a CUDA model the batches are
assembled in pinned host memory and copied to the GPU on a side stream ahead of use (the
training stream waits on the copy's event). On CPU the thread still decodes ahead. The GIL
switch interval is lowered (``loader.share_gil``) so the reader threads are not starved by the
training thread. A worker's error surfaces in ``next_batch`` with its original message;
``restart``, ``set_source``, ``close`` and the end of an epoch stop the threads.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from terarec.data.batch import Batch
from terarec.data.loader import Prefetcher, share_gil
from terarec.enums import name_of
from terarec.errors import ConfigError

#: batches kept ready (on the device for CUDA models) ahead of the training loop.
PREFETCH_DEPTH = 2


class ReaderSlot:
    """One of a model's two readers (train or eval).

    Repeat mode (``repeat_dataset=True``) cycles forever; epoch mode stops at the end of the
    source and ``restart()`` rewinds.
    """

    def __init__(self, model: Any, train: bool) -> None:
        self.model = model
        self.train = train
        self._source: str | None = None
        self._reader: Any = None
        self._iter: Iterator[Batch] | None = None
        self._prefetch: Prefetcher | None = None
        self._exhausted = False
        #: applied to every batch on the prefetch thread, before the copy to the device (the
        #: data-parallel split: each rank copies only its own part of the global batch).
        self.transform: Callable[[Batch], Batch] | None = None

    # -- HugeCTR DataReader methods ------------------------------------------------
    @property
    def source(self) -> str:
        if self._source is not None:
            return self._source
        params = self.model.reader_params
        if params is None:
            return ""
        return params.train_source if self.train else params.eval_source

    def set_source(self, file_name: str = "") -> None:
        """Switch to another file list / file (epoch mode); empty keeps the current one."""
        if file_name:
            self._source = file_name
            self.close()
            self._reader = None
        self.restart()

    def is_started(self) -> bool:
        return self._iter is not None

    def ready_to_collect(self) -> bool:
        return self._iter is not None and not self._exhausted

    def read_a_batch_to_device(self) -> Batch | None:
        return self.next_batch()

    def read_a_batch_to_device_delay_release(self) -> Batch | None:
        return self.next_batch()

    # -- terarec ----------------------------------------------------------------------
    def start(self) -> None:
        if self._iter is None:
            self.restart()

    def restart(self) -> None:
        self.close()
        self._exhausted = False

    def close(self) -> None:
        """Stop the background threads (the next ``next_batch`` starts the source again)."""
        if self._prefetch is not None:
            self._prefetch.close()
        self._prefetch = None
        self._iter = None

    def restart_if_exhausted(self) -> None:
        if self._exhausted:
            self.restart()

    @property
    def repeat(self) -> bool:
        return bool(self.model.solver.repeat_dataset)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.model, "device", None) or "cpu")

    def _prefetcher(self, reader: Any) -> Prefetcher:
        device = self.device
        reader.pin_memory = device.type == "cuda"
        share_gil()  # reader threads next to a busy training thread: see loader.share_gil
        source = reader if self.transform is None else _Transformed(reader, self.transform)
        return Prefetcher(source, device, depth=PREFETCH_DEPTH, num_threads=1)

    def iterate_once(self) -> Iterator[Batch]:
        """One pass over the whole source, independent of the running iterator (prefetched;
        the threads stop when the pass ends or the iterator is dropped)."""
        return iter(self._prefetcher(self._build(repeat=False)))

    def _build(self, repeat: bool | None = None) -> Any:
        from terarec.data.readers import ReaderConfig, create_reader

        params = self.model.reader_params
        if params is None:
            raise ConfigError("Model", "DataReaderParams to read data from", None)
        schema = self.model.spec.schema
        solver = self.model.solver
        source = self.source
        if not source:
            what = "source" if self.train else "eval_source"
            raise ConfigError(f"DataReaderParams({what}=...)", "a file list or data file", source)
        cfg = ReaderConfig(
            format=name_of(params.data_reader_type),
            source=source,
            check_type=name_of(params.check_type),
            num_samples=params.num_samples if self.train else params.eval_num_samples,
            float_label_dense=params.float_label_dense,
            num_workers=params.num_workers,
            slot_size_array=list(params.slot_size_array),
            i64_input_key=solver.i64_input_key,
            is_dense_float=params.async_param.is_dense_float,
            shuffle=bool(params.async_param.shuffle) and self.train,
            read_file_sequentially=params.read_file_sequentially,
            seed=solver.seed,
        )
        batch = solver.batchsize if self.train else solver.batchsize_eval
        return create_reader(cfg, schema, batch,
                             repeat=self.repeat if repeat is None else repeat,
                             rank=self.model.rank, world_size=getattr(self.model, "world_size", 1),
                             drop_incomplete_batch=solver.drop_incomplete_batch)

    def next_batch(self) -> Batch | None:
        """The next batch, or None at the end of the source (epoch mode)."""
        if self._reader is None:
            self.close()
            self._reader = self._build()
        if self._iter is None:
            self._prefetch = self._prefetcher(self._reader)
            # The worker threads hold the prefetcher, not this slot: when the model and its
            # slots are collected without close(), this stops the threads.
            weakref.finalize(self, self._prefetch.close)
            self._iter = iter(self._prefetch)
            self._exhausted = False
        try:
            return next(self._iter)
        except StopIteration:
            self._exhausted = True
            self.close()
            return None
        except BaseException:
            self.close()
            self._iter = iter(())  # as a dead generator: the next call reports the end
            raise


class _Transformed:
    """``reader``'s batches through ``fn`` (iterated on the prefetch thread)."""

    def __init__(self, reader: Iterable[Batch], fn: Callable[[Batch], Batch]) -> None:
        self.reader = reader
        self.fn = fn

    def __iter__(self) -> Iterator[Batch]:
        return map(self.fn, self.reader)

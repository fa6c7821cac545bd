"""The train / eval reader of a ``Model`` (HugeCTR's ``get_data_reader_train/eval`` objects).

Builds a terarec reader from ``DataReaderParams`` + the graph's ``Input`` lazily, feeds
batches through a background prefetcher, and implements repeat vs epoch mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from terarec.data.batch import Batch
from terarec.enums import name_of
from terarec.errors import ConfigError


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
        self._exhausted = False

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
        self._exhausted = False
        self._iter = None

    def restart_if_exhausted(self) -> None:
        if self._exhausted:
            self.restart()

    @property
    def repeat(self) -> bool:
        return bool(self.model.solver.repeat_dataset)

    def iterate_once(self) -> Iterator[Batch]:
        """One pass over the whole source, independent of the running iterator."""
        return iter(self._build(repeat=False))

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
            self._reader = self._build()
            self._iter = None
        if self._iter is None:
            self._iter = iter(self._reader)
            self._exhausted = False
        try:
            return next(self._iter)
        except StopIteration:
            self._exhausted = True
            self._iter = None
            return None

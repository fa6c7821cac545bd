"""``DataReaderParams``, ``AsyncParam``, ``DataSourceParams``, ``DataReaderSparseParam``.

Names, positional order and defaults follow HugeCTR's bindings (§4, §6 of the reference).
``DataSourceParams`` with a remote file system (HDFS/S3/GCS) is accepted but only the local
file system is read; a remote source (``s3://``, ``hdfs://``, ...) raises NotSupportedError
here. A 0 in ``slot_size_array`` (HugeCTR's DIN / BST samples) adds no key offset: the slot
shares the key range of the next slot whose size is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from terarec.compat._check import check_bool, check_int, check_int_list
from terarec.data.source_params import DataSourceParams
from terarec.enums import Alignment_t, Check_t, DataReaderType_t, coerce
from terarec.errors import ConfigError
from terarec.utils.paths import check_local_paths


@dataclass
class AsyncParam:
    """``hugectr.AsyncParam``: settings of HugeCTR's Linux-AIO reader.

    terarec reads RawAsync files with its own threaded reader; ``num_threads`` sets its worker
    count, ``shuffle`` is honoured, the I/O tuning knobs are accepted and ignored.
    """

    num_threads: int
    num_batches_per_thread: int
    max_num_requests_per_thread: int = 0
    io_depth: int = 0
    io_alignment: int = 0
    shuffle: bool = False
    aligned_type: Any = Alignment_t.Non
    multi_hot_reader: bool = True
    is_dense_float: bool = True

    def __post_init__(self) -> None:
        f = "AsyncParam"
        check_int(f, "num_threads", self.num_threads, 1)
        check_int(f, "num_batches_per_thread", self.num_batches_per_thread, 1)
        self.shuffle = check_bool(f, "shuffle", self.shuffle)
        self.aligned_type = coerce(Alignment_t, self.aligned_type, f"{f}(aligned_type=...)")
        if not self.multi_hot_reader and self.is_dense_float:
            raise ConfigError(f"{f}(multi_hot_reader=False, is_dense_float=True)",
                              "is_dense_float=False with the one-hot reader (as HugeCTR)", True)


def _default_async() -> AsyncParam:
    # The DataReaderParams default builds HugeCTR's one-hot reader (quirk §22.2).
    return AsyncParam(16, 4, 512000, 4, 512, False, Alignment_t.Non,
                      multi_hot_reader=False, is_dense_float=False)


@dataclass
class DataReaderParams:
    """``hugectr.DataReaderParams``: where the training and evaluation data are, and how to read it."""

    data_reader_type: Any
    source: str | list[str]
    keyset: str | list[str] = ""
    eval_source: str = ""
    check_type: Any = Check_t.Sum
    cache_eval_data: int = 0
    num_samples: int = 0
    eval_num_samples: int = 0
    float_label_dense: bool = False
    read_file_sequentially: bool = False
    num_workers: int = 12
    slot_size_array: list[int] = field(default_factory=list)
    data_source_params: DataSourceParams = field(default_factory=DataSourceParams)
    async_param: AsyncParam = field(default_factory=_default_async)

    def __post_init__(self) -> None:
        f = "DataReaderParams"
        self.data_reader_type = coerce(DataReaderType_t, self.data_reader_type,
                                       f"{f}(data_reader_type=...)")
        self.check_type = coerce(Check_t, self.check_type, f"{f}(check_type=...)")
        if isinstance(self.source, str):
            if not self.source:
                raise ConfigError(f"{f}(source=...)", "a file list or data file path", self.source)
        elif not (isinstance(self.source, list) and self.source and
                  all(isinstance(s, str) for s in self.source)):
            raise ConfigError(f"{f}(source=...)", "a path or a non-empty list of paths",
                              self.source)
        if not isinstance(self.eval_source, str):
            raise ConfigError(f"{f}(eval_source=...)", "a path", self.eval_source)
        for arg in ("source", "eval_source", "keyset"):
            check_local_paths(getattr(self, arg), f"{f}({arg}=...)")
        check_int(f, "num_samples", self.num_samples, 0)
        check_int(f, "eval_num_samples", self.eval_num_samples, 0)
        check_int(f, "num_workers", self.num_workers, 1)
        self.slot_size_array = check_int_list(f, "slot_size_array", self.slot_size_array)
        if any(s < 0 for s in self.slot_size_array):
            raise ConfigError(f"{f}(slot_size_array=...)", "slot sizes >= 0 (0: the slot adds "
                              "no key offset and shares the next slot's range)",
                              self.slot_size_array)
        self.float_label_dense = check_bool(f, "float_label_dense", self.float_label_dense)
        self.read_file_sequentially = check_bool(f, "read_file_sequentially",
                                                 self.read_file_sequentially)

    @property
    def train_source(self) -> str:
        return self.source if isinstance(self.source, str) else self.source[0]


@dataclass
class DataReaderSparseParam:
    """``hugectr.DataReaderSparseParam(top_name, nnz_per_slot, is_fixed_length, slot_num)``."""

    top_name: str
    nnz_per_slot: int | list[int]
    is_fixed_length: bool
    slot_num: int

    def __post_init__(self) -> None:
        f = f"DataReaderSparseParam({self.top_name!r})"
        if not isinstance(self.top_name, str) or not self.top_name:
            raise ConfigError("DataReaderSparseParam(top_name=...)", "a non-empty name",
                              self.top_name)
        check_int(f, "slot_num", self.slot_num, 1)
        if isinstance(self.nnz_per_slot, list):
            check_int_list(f, "nnz_per_slot", self.nnz_per_slot)
        else:
            check_int(f, "nnz_per_slot", self.nnz_per_slot, 0)
        self.is_fixed_length = check_bool(f, "is_fixed_length", self.is_fixed_length)

"""Output part files of preprocessing: what a worker process writes, and how the parts are listed.

Pass 2 runs on worker processes; each task covers consecutive input blocks and writes the rows
of each split into its own part file, block by block (memory stays bounded by one block):

* ``parquet``: ``<split>/part_<k>.parquet`` (one row group per block, at most ``1 << 17`` rows
  each; float32 label / dense columns, int64 per-slot ids), listed in ``_file_list.txt`` with a
  ``_metadata.json``;
* ``norm``: ``<split>/part_<k>.data`` (Check_t.Sum, global keys = id + slot offset; the header's
  sample count is written when the part is closed), listed in ``_file_list.txt``;
* ``raw``: ``<split>_parts/part_<k>.bin`` (RawAsync rows), which the main process appends in
  task order to ``<split>_data.bin`` as they arrive (and deletes).

``k`` is the task's index, so the parts of a split, in task order, hold its rows in input order.
:class:`SplitParts` collects them in the main process and writes the lists (an empty split gets
one empty part, as a reader needs at least one file).
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod

import numpy as np

from terarec.data.preprocess.transform import Transform
from terarec.data.readers.chunk import Chunk
from terarec.data.readers.norm import HEADER_BYTES
from terarec.data.writers import (
    write_file_list,
    write_norm,
    write_parquet_metadata,
    write_raw_async,
)
from terarec.utils.imports import require
from terarec.utils.registry import Registry

SPLITS = ("train", "val")

#: part writer class per ``format=`` name of ``preprocess_*``
OUTPUT_FORMATS: Registry[type] = Registry("preprocessing output format")

PARQUET_ROW_GROUP = 1 << 17


class PartWriter(ABC):
    """One part file of one split, written block by block on a worker process."""

    #: format name in ``PreprocessResult.format``
    name = ""
    ext = ""

    def __init__(self, out_dir: str, split: str, index: int, t: Transform) -> None:
        self.split_dir = self.directory(out_dir, split)
        os.makedirs(self.split_dir, exist_ok=True)
        self.path = os.path.join(self.split_dir, f"part_{index:05d}{self.ext}")
        self.t = t
        self.rows = 0

    @staticmethod
    def directory(out_dir: str, split: str) -> str:
        """Where the parts of ``split`` go."""
        return os.path.join(out_dir, split)

    def add(self, c: Chunk) -> None:
        """Append the rows of one block (one key per slot, per-slot ids)."""
        if len(c):
            self._write(c)
            self.rows += len(c)

    def add_columns(self, labels: np.ndarray, dense: np.ndarray, ids: np.ndarray) -> None:
        """Append the rows of one block given as ``(n, L)`` labels, ``(n, D)`` dense and
        ``(n, S)`` per-slot ids (any memory order; :meth:`Transform.encode`)."""
        n = labels.shape[0]
        if n:
            self._write_columns(labels, dense, ids)
            self.rows += n

    def _write_columns(self, labels: np.ndarray, dense: np.ndarray, ids: np.ndarray) -> None:
        n, S = ids.shape
        self._write(Chunk(labels, dense, [ids.reshape(-1)], [np.ones((n, S), np.int64)]))

    def close(self) -> tuple[str, int] | None:
        """Finish the file: ``(path, rows)``, or None (and no file) when no row was added."""
        return self.finish() if self.rows else None

    def finish(self) -> tuple[str, int]:
        """Finish the file, a valid one of 0 rows when none was added: ``(path, rows)``."""
        self._finish()
        return self.path, self.rows

    @abstractmethod
    def _write(self, c: Chunk) -> None: ...

    @abstractmethod
    def _finish(self) -> None: ...


@OUTPUT_FORMATS.register("parquet", "Parquet")
class ParquetPart(PartWriter):
    name = "parquet"
    ext = ".parquet"

    def __init__(self, out_dir: str, split: str, index: int, t: Transform) -> None:
        super().__init__(out_dir, split, index, t)
        self._writer = None

    def _schema(self):
        pa = require("pyarrow", extra="parquet", feature="Writing Parquet")
        t = self.t
        return pa.schema([(n, pa.float32()) for n in t.label_names + t.dense_names] +
                         [(n, pa.int64()) for n in t.cat_names])

    def _open(self):
        if self._writer is None:
            pq = require("pyarrow.parquet", extra="parquet", feature="Writing Parquet")
            self._writer = pq.ParquetWriter(self.path, self._schema())
        return self._writer

    def _write(self, c: Chunk) -> None:
        self._write_columns(c.labels, c.dense, c.keys[0].reshape(len(c), len(self.t.cat_names)))

    def _write_columns(self, labels: np.ndarray, dense: np.ndarray, ids: np.ndarray) -> None:
        pa = require("pyarrow", extra="parquet", feature="Writing Parquet")
        n = labels.shape[0]
        # every column handed over as one contiguous buffer (no copy when the block is
        # column-major, as parsed); pa.Array.from_buffers, as pa.array(numpy) imports pandas
        cols = [_arrow(pa, pa.float32(), v, np.float32, n) for v in (*labels.T, *dense.T)]
        cols += [_arrow(pa, pa.int64(), v, np.int64, n) for v in ids.T]
        table = pa.Table.from_arrays(cols, schema=self._schema())
        self._open().write_table(table, row_group_size=PARQUET_ROW_GROUP)

    def _finish(self) -> None:
        self._open().close()


@OUTPUT_FORMATS.register("norm", "Norm")
class NormPart(PartWriter):
    """Check_t.Sum records of every block after one header record (§15.2)."""

    name = "norm"
    ext = ".data"
    #: int32 record length + the 64-byte header + its checksum byte
    HEAD = 4 + HEADER_BYTES + 1

    def __init__(self, out_dir: str, split: str, index: int, t: Transform) -> None:
        super().__init__(out_dir, split, index, t)
        sizes = t.slot_size_array
        self._offs = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        self._i64 = sum(sizes) > 0xFFFFFFFF
        self._head = b""

    def _encode(self, c: Chunk) -> bytes:
        """The Norm file of one block (header record + sample records), as bytes."""
        S = len(self._offs)
        keys = (c.keys[0].reshape(-1, S) + self._offs).reshape(-1) if S else c.keys[0]
        tmp = self.path + ".block"
        write_norm(tmp, Chunk(c.labels, c.dense, [keys], c.lengths), check_type="Sum",
                   i64_input_key=self._i64)
        with open(tmp, "rb") as fh:
            data = fh.read()
        os.remove(tmp)
        return data

    def _write(self, c: Chunk) -> None:
        data = self._encode(c)
        first = not self._head
        if first:
            self._head = data[: self.HEAD]  # its sample count is set in _finish
        with open(self.path, "wb" if first else "ab") as fh:
            fh.write(data if first else data[self.HEAD :])

    def _finish(self) -> None:
        if not self._head:  # empty part: a header record saying 0 samples
            self._write(_empty(self.t))
        head = bytearray(self._head)
        head[12:20] = np.int64(self.rows).astype("<i8").tobytes()  # header field 1: samples
        head[4 + HEADER_BYTES] = sum(head[4 : 4 + HEADER_BYTES]) & 0xFF
        with open(self.path, "r+b") as fh:
            fh.write(bytes(head))


@OUTPUT_FORMATS.register("raw", "RawAsync", "Raw")
class RawPart(PartWriter):
    """RawAsync rows (int32 label, float32 dense, uint32 per-slot ids); the main process
    appends the parts to ``<split>_data.bin``."""

    name = "raw"
    ext = ".bin"

    @staticmethod
    def directory(out_dir: str, split: str) -> str:
        return os.path.join(out_dir, f"{split}_parts")

    def _write(self, c: Chunk) -> None:
        write_raw_async(self.path, c, i64_input_key=False, is_dense_float=True,
                        append=self.rows > 0)

    def _finish(self) -> None:
        if not self.rows:
            open(self.path, "wb").close()


def _arrow(pa, typ, v: np.ndarray, dtype, n: int):
    """A pyarrow array (no nulls) over the contiguous ``dtype`` values of ``v``."""
    v = np.ascontiguousarray(v, dtype=dtype)
    return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(v)])


def _empty(t: Transform) -> Chunk:
    L, D, S = len(t.label_names), len(t.dense_names), len(t.cat_names)
    return Chunk(np.zeros((0, L), np.float32), np.zeros((0, D), np.float32),
                 [np.zeros(0, np.int64)], [np.zeros((0, S), np.int64)])


class SplitParts:
    """The parts of one split, in task order, as the main process receives them."""

    def __init__(self, cls: type[PartWriter], out_dir: str, split: str, t: Transform) -> None:
        self.cls, self.out_dir, self.split, self.t = cls, out_dir, split, t
        self.files: list[str] = []
        self.rows: list[int] = []
        self.raw_path = os.path.join(out_dir, f"{split}_data.bin")
        if cls is RawPart:
            open(self.raw_path, "wb").close()

    def add(self, path: str, rows: int) -> None:
        """A finished part (parts arrive in task order)."""
        if self.cls is RawPart:  # append to the one Raw file, drop the part
            with open(path, "rb") as src, open(self.raw_path, "ab") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
            os.remove(path)
            path = self.raw_path
        self.files.append(path)
        self.rows.append(rows)

    def close(self) -> str:
        """Write the file list (and ``_metadata.json``); return the split's reader source."""
        if self.cls is RawPart:
            shutil.rmtree(RawPart.directory(self.out_dir, self.split), ignore_errors=True)
            self.files, self.rows = [self.raw_path], [sum(self.rows)]
            return self.raw_path
        if not self.files:  # readers need at least one file
            self.add(*self.cls(self.out_dir, self.split, 0, self.t).finish())
        directory = self.cls.directory(self.out_dir, self.split)
        src = os.path.join(directory, "_file_list.txt")
        write_file_list(src, self.files)
        if self.cls is ParquetPart:
            t = self.t
            write_parquet_metadata(directory, self.files, self.rows,
                                   (t.label_names, t.dense_names, t.cat_names))
        return src


__all__ = ["OUTPUT_FORMATS", "SPLITS", "NormPart", "ParquetPart", "PartWriter", "RawPart",
           "SplitParts"]

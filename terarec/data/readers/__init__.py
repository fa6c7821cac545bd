"""Readers of every data format HugeCTR users have, behind one API.

``create_reader(ReaderConfig(format=..., source=...), schema, batch_size)`` returns a
:class:`Reader` (an iterable of :class:`~terarec.data.batch.Batch`). Formats are looked up in the
``READERS`` registry by HugeCTR's names: ``"Norm"``, ``"Raw"``, ``"RawAsync"``, ``"Parquet"``,
plus ``"CriteoTSV"`` (raw Criteo day files, plain or gzip).
"""

from __future__ import annotations

from terarec.data.readers.base import FormatSource, Reader, ReaderConfig, read_file_list
from terarec.data.readers.chunk import Chunk
from terarec.data.readers.criteo_tsv import CriteoTSVSource
from terarec.data.readers.norm import NormSource
from terarec.data.readers.parquet import ParquetSource
from terarec.data.readers.raw import RawAsyncSource, RawSource
from terarec.data.schema import DataSchema
from terarec.utils.registry import Registry

READERS: Registry[type[FormatSource]] = Registry("data reader format")
READERS.add("Norm", NormSource)
READERS.add("Raw", RawSource)
READERS.add("RawAsync", RawAsyncSource)
READERS.add("Parquet", ParquetSource)
READERS.add("CriteoTSV", CriteoTSVSource, "Criteo", "TSV")


def create_reader(
    config: ReaderConfig, schema: DataSchema, batch_size: int, *, repeat: bool = True,
    rank: int = 0, world_size: int = 1, drop_incomplete_batch: bool = True,
) -> Reader:
    """Open ``config.source`` with the reader of ``config.format``.

    Args:
        config: format, source and decoding options.
        schema: label / dense / sparse layout the files must match.
        batch_size: samples per yielded batch (this rank's local batch).
        repeat: wrap around forever (True) or stop at the end of the data (epoch mode).
        rank, world_size: read only this rank's share (every sample read by exactly one rank).
        drop_incomplete_batch: in epoch mode, drop (True) or yield (False) a last short batch.
    """
    cls = READERS.get(config.format, "ReaderConfig.format")
    return Reader(cls, config, schema, batch_size, repeat=repeat, rank=rank,
                  world_size=world_size, drop_incomplete_batch=drop_incomplete_batch)


__all__ = [
    "READERS", "Chunk", "FormatSource", "Reader", "ReaderConfig", "create_reader",
    "read_file_list",
]

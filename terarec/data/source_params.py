"""``DataSourceParams``: which file system data lives on (``hugectr.data.DataSourceParams``).

terarec reads the local file system; HDFS/S3/GCS settings are accepted and stored, and a
reader given a remote source raises an error that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from terarec.enums import FileSystemType_t, coerce


@dataclass
class DataSourceParams:
    """``DataSourceParams(source=FileSystemType_t.Local, server="localhost", port=9000)``."""

    source: Any = FileSystemType_t.Local
    server: str = "localhost"
    port: int = 9000

    def __post_init__(self) -> None:
        self.source = coerce(FileSystemType_t, self.source, "DataSourceParams(source=...)")

"""Reader API core: ``ReaderConfig``, the ``FormatSource`` protocol and the batching ``Reader``.

A *format source* knows one file format: which files a ``source`` names, how many samples each
holds and how to decode samples ``[start, stop)`` of a file into :class:`Chunk` s. The
:class:`Reader` is format-agnostic: it splits the samples between ranks, decodes ahead on a pool
of worker threads, (optionally) shuffles, cuts batches and handles epoch / repeat mode.

Decoding runs on ``num_workers`` threads (numpy and pyarrow release the GIL): the decode jobs of
the units (see :meth:`FormatSource.jobs`) are started up to ``2 * num_workers`` ahead and their
chunks are consumed in unit order, and each batch is then cut, shuffled, concatenated and turned
into tensors (pinned ones when ``Reader.pin_memory`` is set, for CUDA targets) on a second pool
of ``num_workers`` threads, again handed out in order. The output (including the shuffle order)
does not depend on ``num_workers``.

Rank partitioning: when every file's sample count is known (Norm header, Raw/RawAsync size,
Parquet metadata) rank ``r`` of ``W`` reads the contiguous global sample range
``[N*r//W, N*(r+1)//W)``. For sources whose counts are unknown until read (Criteo TSV) each file
is cut into blocks of ``block_rows`` lines and block ``j`` goes to rank ``j % W``. Either way every
sample is read by exactly one rank.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terarec.data.batch import Batch
from terarec.data.readers.chunk import Chunk
from terarec.data.schema import DataSchema
from terarec.enums import name_of
from terarec.errors import ConfigError, DataError
from terarec.utils.paths import check_local_path, check_local_paths


@dataclass
class ReaderConfig:
    """What to read and how (the reader-relevant part of HugeCTR's ``DataReaderParams``).

    ``format`` is a HugeCTR reader name (``"Norm"``, ``"Raw"``, ``"RawAsync"``, ``"Parquet"``) or
    ``"CriteoTSV"``; enum members (``DataReaderType_t.Norm``, ``Check_t.Sum``) are accepted too.
    """

    format: Any
    source: str | list[str]
    check_type: Any = "Sum"
    num_samples: int = 0
    float_label_dense: bool = False
    num_workers: int = 12
    slot_size_array: list[int] = field(default_factory=list)
    i64_input_key: bool = False
    is_dense_float: bool = True
    shuffle: bool = False
    read_file_sequentially: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.format = name_of(self.format)
        self.check_type = name_of(self.check_type)
        if self.check_type not in ("Sum", "Non"):
            raise ConfigError("ReaderConfig.check_type", "'Sum' or 'Non' (Check_t)",
                              self.check_type)
        self.slot_size_array = [int(s) for s in self.slot_size_array]
        if any(s < 0 for s in self.slot_size_array):
            raise ConfigError("ReaderConfig.slot_size_array", "sizes >= 0 (0: no key offset, "
                              "the slot shares the next slot's range)", self.slot_size_array)
        if self.num_samples < 0:
            raise ConfigError("ReaderConfig.num_samples", "a non-negative count", self.num_samples)


def read_file_list(path: str) -> list[str]:
    """Parse a HugeCTR file list (§15.1): first line N, then N paths (relative to the CWD)."""
    check_local_path(path, "reader source (file list)")
    if not os.path.isfile(path):
        raise DataError(path, "file list does not exist")
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [ln.strip() for ln in fh]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(path, "file list is empty; expected the number of files on line 1", row=1)
    try:
        n = int(lines[0])
    except ValueError:
        raise DataError(path, f"expected the number of files on line 1, got {lines[0]!r}",
                        row=1) from None
    files = lines[1:]
    if n <= 0:
        raise DataError(path, f"file list names {n} files; expected at least one", row=1)
    if len(files) < n:
        raise DataError(path, f"line 1 says {n} files but only {len(files)} paths follow",
                        row=len(lines))
    return files[:n]


def check_files_exist(paths: list[str], where: str) -> None:
    if not paths:
        raise DataError(where, "no data files (empty file list)")
    for p in paths:
        check_local_path(p, f"data file listed in {where}")
        if not os.path.isfile(p):
            raise DataError(p, f"data file does not exist (listed in {where})")


class FormatSource(ABC):
    """One file format. Subclasses register in ``READERS`` under HugeCTR's format name."""

    #: counts per file known up front (contiguous rank ranges) or not (round-robin blocks).
    counts_known: bool = True
    #: rows per decode unit for formats that can decode any row range cheaply (0: whole file).
    unit_rows: int = 0

    def __init__(self, config: ReaderConfig, schema: DataSchema) -> None:
        self.config = config
        self.schema = schema
        self.rank, self.world_size = 0, 1
        check_local_paths(config.source, f"{self.__class__.__name__}(source=...)")
        self.paths = self.resolve(config.source)
        self.counts = [self.file_num_samples(p) for p in self.paths] if self.counts_known else []

    @abstractmethod
    def resolve(self, source: str | list[str]) -> list[str]:
        """The data files that ``source`` names (file list, directory, file)."""

    @abstractmethod
    def file_num_samples(self, path: str) -> int:
        """Number of samples of one file (validates its header/size)."""

    @abstractmethod
    def decode(self, path: str, start: int, stop: int) -> Iterator[Chunk]:
        """Decode samples ``[start, stop)`` of ``path`` (stop=-1: to the end, rank blocks)."""

    def jobs(self, path: str, start: int, stop: int) -> Iterator[Callable[[], list[Chunk]]]:
        """Independent decode jobs for ``decode(path, start, stop)``, in order; the Reader runs
        them on its worker threads. Default: one job. Streaming formats (Criteo TSV) yield one
        job per block so that one file is parsed by several threads."""
        yield lambda: list(self.decode(path, start, stop))

    def pieces(self, index: int, start: int, stop: int) -> list[tuple[int, int]]:
        """Split a file's row range into decode units."""
        if not self.unit_rows:
            return [(start, stop)]
        return [(a, min(a + self.unit_rows, stop)) for a in range(start, stop, self.unit_rows)]


class Reader:
    """An iterable of :class:`Batch` over one source (see module docstring).

    ``batch_size`` is the number of samples per yielded batch for *this* reader (a rank's local
    batch). In epoch mode (``repeat=False``) iteration ends at the end of the data; in repeat mode
    it wraps around forever (a batch may span the end and the start of the data).
    """

    def __init__(
        self, source_cls: type[FormatSource], config: ReaderConfig, schema: DataSchema,
        batch_size: int, *, repeat: bool = True, rank: int = 0, world_size: int = 1,
        drop_incomplete_batch: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ConfigError("create_reader(batch_size=...)", "a positive integer", batch_size)
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError("create_reader(rank, world_size)", "0 <= rank < world_size",
                              (rank, world_size))
        self._cls = source_cls
        self.config = config
        self.schema = schema
        self.batch_size = batch_size
        self.repeat = repeat
        self.rank, self.world_size = rank, world_size
        self.drop_incomplete_batch = drop_incomplete_batch
        self.epoch = 0
        #: assemble batches in pinned host memory (set for CUDA targets; needs a CUDA build).
        self.pin_memory = False
        self._open()

    def _open(self) -> None:
        self.source = self._cls(self.config, self.schema)
        self.source.rank, self.source.world_size = self.rank, self.world_size

    def set_source(self, source: str | list[str]) -> None:
        """Read other files from now on (HugeCTR ``DataReader.set_source``); restarts the epoch."""
        self.config.source = source
        self._open()
        self.epoch = 0

    def reset(self) -> None:
        """Start again from the first sample (epoch counter back to 0)."""
        self.epoch = 0

    @property
    def total_samples(self) -> int | None:
        """Samples in the whole source (all ranks), if known without reading it."""
        return int(sum(self.source.counts)) if self.source.counts_known else None

    @property
    def num_samples(self) -> int | None:
        """Samples this rank reads per epoch, if known."""
        total = self.total_samples
        if total is None:
            return None
        lo, hi = self._rank_range(total)
        return hi - lo

    def _rank_range(self, total: int) -> tuple[int, int]:
        return total * self.rank // self.world_size, total * (self.rank + 1) // self.world_size

    def _units(self, epoch: int) -> list[tuple[str, int, int]]:
        src = self.source
        order = list(range(len(src.paths)))
        if not src.counts_known:
            if self.config.shuffle:
                np.random.default_rng(self.config.seed + epoch).shuffle(order)
            return [(src.paths[i], 0, -1) for i in order]
        bounds = np.concatenate(([0], np.cumsum(src.counts))).astype(np.int64)
        lo, hi = self._rank_range(int(bounds[-1]))
        units = []
        for i in range(len(src.paths)):
            a, b = max(lo, bounds[i]), min(hi, bounds[i + 1])
            if a < b:
                for p in src.pieces(i, int(a - bounds[i]), int(b - bounds[i])):
                    units.append((src.paths[i], p[0], p[1]))
        if self.config.shuffle:
            perm = np.random.default_rng(self.config.seed + epoch).permutation(len(units))
            units = [units[j] for j in perm]
        return units

    def _workers(self) -> int:
        return max(1, min(self.config.num_workers, os.cpu_count() or 1))

    def _chunks(self) -> Iterator[tuple[Chunk, np.ndarray | None]]:
        """Decoded chunks in file order, each with its within-chunk shuffle permutation (or None).

        Units are decoded concurrently on ``num_workers`` threads (numpy / pyarrow release the
        GIL), up to ``2 * num_workers`` ahead, and handed on in unit order, so the output does not
        depend on the number of workers. The permutations are drawn here, in order, from one
        seeded generator; applying them is left to the batch assembly threads.
        """
        workers = self._workers()
        rng = np.random.default_rng(self.config.seed + 7919)
        shuffle = self.config.shuffle
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="terarec-decode") as pool:
            while True:
                got = 0
                jobs = self._jobs(self._units(self.epoch))
                if workers == 1:
                    results: Iterator[list[Chunk]] = (job() for job in jobs)
                else:
                    results = self._run_ahead(pool, jobs, 2 * workers)
                for chunks in results:
                    for c in chunks:
                        got += len(c)
                        yield c, rng.permutation(len(c)) if shuffle and len(c) > 1 else None
                self.epoch += 1
                if not self.repeat:
                    return
                if got == 0:
                    raise DataError(str(self.config.source),
                                    f"rank {self.rank} of {self.world_size} has no samples to read")

    def _jobs(self, units: list[tuple[str, int, int]]) -> Iterator[Callable[[], list[Chunk]]]:
        """The decode jobs of all units in order; an error while listing them (e.g. an empty
        file) becomes a job that raises it, so that it surfaces in order."""
        for u in units:
            try:
                yield from self.source.jobs(*u)
            except Exception as exc:  # noqa: BLE001 - re-raised in order by the job
                def fail(exc: Exception = exc) -> list[Chunk]:
                    raise exc

                yield fail
                return

    @staticmethod
    def _run_ahead(pool: ThreadPoolExecutor, jobs: Iterator[Callable[[], list[Chunk]]],
                   depth: int) -> Iterator[list[Chunk]]:
        """Results of ``jobs`` in order, with up to ``depth`` of them running on ``pool``."""
        pending: deque[Future] = deque()
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _plans(self) -> Iterator[list[tuple[Chunk, np.ndarray | None, int, int]]]:
        """Cut the chunk stream into batches: each plan lists the ``(chunk, perm, a, b)`` pieces
        (samples ``a:b`` of the chunk, after its permutation) that make one batch. O(1) per piece:
        no sample data is touched here."""
        bs = self.batch_size
        pending: list[tuple[Chunk, np.ndarray | None, int, int]] = []
        have = 0
        for chunk, perm in self._chunks():
            n = len(chunk)
            pos = 0
            if have:
                need = bs - have
                if n < need:
                    pending.append((chunk, perm, 0, n))
                    have += n
                    continue
                yield [*pending, (chunk, perm, 0, need)]
                pending, have, pos = [], 0, need
            while n - pos >= bs:
                yield [(chunk, perm, pos, pos + bs)]
                pos += bs
            if pos < n:
                pending, have = [(chunk, perm, pos, n)], n - pos
        if have and not self.drop_incomplete_batch:
            yield pending

    def _assemble(self, plan: list[tuple[Chunk, np.ndarray | None, int, int]]) -> Batch:
        parts = [c.slice(a, b) if perm is None else c.take(perm[a:b]) for c, perm, a, b in plan]
        batch = Chunk.concat(parts).to_batch(self.schema)
        return batch.pin_memory() if self.pin_memory else batch

    def __iter__(self) -> Iterator[Batch]:
        """Batches in order. Slicing, shuffling, concatenation and tensor building of each batch
        run on ``num_workers`` assembly threads, so the consuming thread only hands batches out;
        batches before a decode error are still delivered before the error is raised."""
        workers = self._workers()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="terarec-batch") as pool:
            ready: deque[Future] = deque()
            try:
                for plan in self._plans():
                    ready.append(pool.submit(self._assemble, plan))
                    if len(ready) > workers:
                        yield ready.popleft().result()
            except Exception:  # deliver what was decoded before the error, then raise it
                while ready:
                    fut = ready.popleft()
                    if fut.exception() is None:
                        yield fut.result()
                raise
            while ready:
                yield ready.popleft().result()

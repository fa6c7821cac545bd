"""Streaming, multiprocess two-pass preprocessing of text data into Parquet / Raw / Norm.

The input is cut into blocks of whole lines (~``block_bytes``, plain or ``.gz``). Pass 1 (fit)
parses the training blocks on a process pool (the one that counted the lines); every task
covers consecutive blocks (grouped as the parts below) and merges their dense statistics and
per-column value counts on its worker, the main process merges the tasks' (columns on up to 8
threads). The fitted :class:`Transform` is saved (JSON) while its lookup tables are built
(:meth:`Transform.prepare`, hash tables of packed values), both before pass 2's pool forks, so
its workers share the tables. Pass 2: every task covers consecutive blocks, and its worker
encodes and writes the rows of each split into its own part file
(:mod:`~terarec.data.preprocess.parts`), so encoding scales with the workers. The main process
only lists the parts in input order. Memory is bounded by the block size x the number of
blocks in flight (plus the vocabularies). Bad rows: ``on_error="raise"`` (default) stops at the
first with file, line and field; ``"skip"`` drops them and lists them in the summary.

Parts: a task takes consecutive blocks of plain files until they hold ``rows_per_file`` lines
(whole blocks, so a part may hold up to one block more), or fewer when the input has fewer than
``2 x workers x rows_per_file`` lines, so that every worker has about two parts to write; a
block of a ``.gz`` file (its bytes travel with the task) is a task of its own. The part layout can thus
depend on the number of workers; the rows, their order and every value do not.

Output layout (``out_dir``): ``train/`` and ``val/`` each with ``part_<k>.parquet`` +
``_file_list.txt`` + ``_metadata.json`` (format ``"parquet"``), ``<split>_data.bin``
(``"raw"`` = RawAsync one-hot: int32 label, float32 dense, uint32 per-slot ids) or
``part_<k>.data`` + ``_file_list.txt`` (``"norm"``: Check_t.Sum, global keys = id + slot offset);
``transform.json`` + ``vocab.json``; ``summary.json``.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from terarec.data.preprocess.parts import OUTPUT_FORMATS, SPLITS, SplitParts
from terarec.data.preprocess.result import PreprocessResult
from terarec.data.preprocess.spec import TextSpec, _mask_rows, parse_block
from terarec.data.preprocess.transform import FitStats, Transform
from terarec.data.readers.criteo_tsv import iter_counted_blocks, iter_line_blocks
from terarec.data.writers import parquet_column_names
from terarec.errors import ConfigError, DataError

#: (path, first line number, global data-row index of that line, block, lines in the block)
Block = tuple[str, int, int, "bytes | tuple", int]


def _blocks(paths: list[str], spec: TextSpec, block_bytes: int, pool: _Workers | None = None
            ) -> Iterator[Block]:
    """(path, first line number, global data-row index of that line, block, lines) per block.

    ``block`` is the bytes of whole lines or, for plain (not gzip) files, a reference
    ``(path, start, stop)`` that the worker process reads itself (:func:`_load`), so that the
    main process neither reads nor ships the data. Block boundaries are those of
    ``iter_line_blocks`` (the last newline within ``block_bytes``); the line counts of the
    blocks of every plain file are taken on the worker processes first (one parallel pass, one
    process pool for all files), so line numbers stay exact.
    """
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(path, "input file does not exist")
    starts: dict[int, tuple[int, int]] = {}  # plain file -> (first line number, first byte)
    header_line: bytes | None = None
    for i, path in enumerate(paths):
        head_raw = _first_line(path) if spec.header else b""
        head = head_raw.rstrip(b"\n").rstrip(b"\r")
        skip = bool(head_raw) and (header_line is None or head == header_line)
        if skip:
            header_line = head
        if not path.endswith(".gz"):
            starts[i] = (2, len(head_raw)) if skip else (1, 0)
    refs = {i: [(paths[i], a, b) for a, b in _cuts(paths[i], start, block_bytes)]
            for i, (_, start) in starts.items()}
    counts = (pool or _Workers(1, ())).map(_count_lines, [r for i in starts for r in refs[i]])
    g = 0
    header_line = None
    for i, path in enumerate(paths):
        if i in starts:
            line0 = starts[i][0]
            if line0 == 2:
                header_line = _first_line(path).rstrip(b"\n").rstrip(b"\r")
            for ref in refs[i]:
                n = next(counts)
                yield path, line0, g, ref, n
                line0 += n
                g += n
            continue
        first = True
        for line0, data, n in iter_counted_blocks(path, block_bytes):
            if first and spec.header:
                nl = data.find(b"\n")
                head = data[:nl].rstrip(b"\r")
                if header_line is None or head == header_line:
                    header_line = head
                    data, line0, n = data[nl + 1:], line0 + 1, n - 1
            first = False
            if data:
                yield path, line0, g, data, n
                g += n


def _first_line(path: str) -> bytes:
    """The first line of a file (plain or ``.gz``) with its newline, b"" when it is empty."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as fh:
        return fh.readline()


def _cuts(path: str, start: int, block_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges ``[a, b)`` of whole lines from ``start``, cut where ``iter_line_blocks`` cuts:
    at the last newline before each multiple of ``block_bytes`` (none there: no cut)."""
    size = os.path.getsize(path)
    out = []
    a = start
    with open(path, "rb") as fh:
        bound = (start // block_bytes + 1) * block_bytes
        while a < size:
            hi, cut = min(bound, size), -1
            while hi > a and cut < 0:  # scan [a, bound) backwards in 64 KiB steps
                lo = max(a, hi - (1 << 16))
                fh.seek(lo)
                k = fh.read(hi - lo).rfind(b"\n")
                cut = lo + k + 1 if k >= 0 else -1
                hi = lo
            if cut > 0:
                out.append((a, cut))
                a = cut
            if bound >= size:
                break
            bound += block_bytes
    if a < size:
        out.append((a, size))
    return out


def _load(block: bytes | tuple) -> bytes:
    """The bytes of a block (read here when it is a ``(path, start, stop)`` reference)."""
    if isinstance(block, bytes):
        return block
    path, a, b = block
    with open(path, "rb") as fh:
        fh.seek(a)
        data = fh.read(b - a)
    return data if data.endswith(b"\n") else data + b"\n"


def _count_lines(ref: tuple) -> int:
    return _load(ref).count(b"\n")


def read_header(path: str, sep: str) -> list[str]:
    for _, data in iter_line_blocks(path, 1 << 16):
        return data[: data.find(b"\n")].rstrip(b"\r").decode("utf-8").split(sep)
    raise DataError(path, "file is empty; expected a header line", row=1)


#: what every task of the running pass needs, set once per worker process (``_share``) so
#: that tasks carry only their blocks: (spec, transform, on_error) for the fit, (spec,
#: transform, format class, output directory, on_error) for the apply pass.
_SHARED: tuple = ()


def _share(shared: tuple) -> None:
    global _SHARED
    _SHARED = shared


def _parse(block: Block, max_bad: int):
    """Parse one block: (Parsed rows, bad rows as (path, line, problem))."""
    path, line0, _, data, n = block
    p = parse_block(_SHARED[0], np.frombuffer(_load(data), np.uint8), line0, max_bad, n)
    return p, [(path, ln, msg) for ln, msg in p.bad]


def _is_eval(p, block: Block, eval_start: int) -> np.ndarray:
    """Which parsed rows of ``block`` go to the eval split (global row index >= eval_start)."""
    _, line0, g0, _, _ = block
    return (g0 + (p.lines - line0)) >= eval_start


class _Tally:
    """Bad rows (the first ``max_bad``), bad count and rows of one task's parsed blocks."""

    def __init__(self) -> None:
        self.bad: list[tuple[str, int, str]] = []
        self.n_bad = 0
        self.n = 0


def _parsed(blocks: Iterable[tuple[Block, int]], max_bad: int, on_error: str,
            tally: _Tally) -> Iterator[tuple]:
    """(parsed block, block, eval start) of ``blocks`` in order, counted in ``tally``; with
    ``on_error="raise"`` it stops at the first block with a bad row."""
    for block, eval_start in blocks:
        p, b = _parse(block, max_bad)
        tally.bad += b[: max(0, max_bad - len(tally.bad))]
        tally.n_bad += p.n_bad
        tally.n += len(p.lines)
        if p.n_bad and on_error == "raise":
            return
        yield p, block, eval_start


def _fit_task(args: tuple) -> tuple:
    """Pass 1 on consecutive blocks: (FitStats of their training rows, merged and compacted
    here, bad rows, bad count, rows). With ``on_error="raise"`` it stops at the first block
    with a bad row (the main process raises for it)."""
    blocks, _, max_bad = args
    transform, on_error = _SHARED[1], _SHARED[2]
    stats = FitStats()
    tally = _Tally()
    for p, block, eval_start in _parsed(blocks, max_bad, on_error, tally):
        tr = _split(p, block, eval_start)[0]
        if tr is None:  # every row for eval: statistics of no rows
            tr = _mask_rows(p, np.zeros(len(p.lines), bool))
        stats = stats.merge(FitStats.of(tr, transform.hash_buckets is None), fold=False)
    return stats.compact(), tally.bad, tally.n_bad, tally.n


def _apply_task(args: tuple) -> tuple:
    """Pass 2 on consecutive blocks: write this task's part of each split.

    Returns ({split: (path, rows) or None}, bad rows, bad count, rows). With ``on_error=
    "raise"`` it stops at the first block with a bad row (the main process raises for it).
    """
    blocks, index, max_bad = args
    _, transform, part_cls, out_dir, on_error = _SHARED
    parts = {s: part_cls(out_dir, s, index, transform) for s in SPLITS}
    tally = _Tally()
    try:
        for p, block, eval_start in _parsed(blocks, max_bad, on_error, tally):
            for split, rows in zip(SPLITS, _split(p, block, eval_start)):
                if rows is not None:
                    parts[split].add_columns(*transform.encode(rows))
    finally:
        written = {s: w.close() for s, w in parts.items()}
    return written, tally.bad, tally.n_bad, tally.n


def _split(p, block: Block, eval_start: int) -> tuple:
    """(training rows, eval rows) of a parsed block; None for a split without rows, and no
    copy when all rows go to one split."""
    is_eval = _is_eval(p, block, eval_start)
    if not is_eval.any():
        return p, None
    if is_eval.all():
        return None, p
    return _mask_rows(p, ~is_eval), _mask_rows(p, is_eval)


def _even_tasks(pairs: list[tuple[Block, int]], target: int, min_tasks: int) -> Iterator[tuple]:
    """Consecutive (block, eval_start) pairs in ``k`` runs of (nearly) equal block counts: ``k``
    at least ``min_tasks`` and large enough that a run holds about ``target`` lines at most."""
    if not pairs:
        return
    lines = sum(b[4] for b, _ in pairs)
    k = min(len(pairs), max(min_tasks, -(-lines // max(target, 1))))
    bounds = [len(pairs) * i // k for i in range(k + 1)]
    for i in range(k):
        yield pairs[bounds[i] : bounds[i + 1]], i, _MAX_BAD


def _part_tasks(blocks: Iterable[tuple[Block, int]], target: int, max_bad: int
                ) -> Iterator[tuple]:
    """Group (block, eval_start) pairs into pass-2 tasks: consecutive plain-file blocks until
    they hold ``target`` lines; a gzip block (bytes) alone."""
    group: list[tuple[Block, int]] = []
    lines = k = 0
    for item in blocks:
        inline = isinstance(item[0][3], bytes)
        if group and (inline or lines >= target):
            yield group, k, max_bad
            group, lines, k = [], 0, k + 1
        group.append(item)
        lines += item[0][4]
        if inline:
            yield group, k, max_bad
            group, lines, k = [], 0, k + 1
    if group:
        yield group, k, max_bad


class _Workers:
    """The worker processes of one phase, started on first use: ``shared`` is handed to each
    once (``_SHARED``), so that tasks carry only their blocks. One pool serves the line counting
    and pass 1, another (forked after the fit, sharing the transform's tables) pass 2. With one
    worker everything runs in this process."""

    def __init__(self, workers: int, shared: tuple) -> None:
        self.workers, self.shared = workers, shared
        self._pool: Executor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux")
                                              else "spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_share,
                                             initargs=(self.shared,))
        return self._pool

    def map(self, fn: Callable, items: list) -> Iterator:
        """``fn`` of every item, in order (all of them computed before the first is returned)."""
        if self.workers <= 1 or len(items) <= 1:
            return map(fn, items)
        return iter(list(self._executor().map(fn, items)))

    def run(self, fn: Callable[[tuple], tuple], tasks: Iterator[tuple]) -> Iterator[tuple]:
        """Map ``fn`` over ``tasks`` in order with at most ``2 * workers`` in flight."""
        if self.workers <= 1:
            _share(self.shared)
            for t in tasks:
                yield fn(t)
            return
        pool = self._executor()
        pending: deque[Future] = deque()
        try:
            for t in tasks:
                pending.append(pool.submit(fn, t))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Progress:
    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled = label, enabled
        self.t0 = self.last = time.perf_counter()
        self.rows = 0

    def add(self, n: int, final: bool = False) -> None:
        self.rows += n
        now = time.perf_counter()
        if self.enabled and (final or now - self.last > 2.0):
            self.last = now
            rate = self.rows / max(now - self.t0, 1e-9)
            print(f"[terarec preprocess] {self.label}: {self.rows:,} rows, {rate:,.0f} rows/s",
                  file=sys.stderr, flush=True)


def preprocess_text(
    inputs: list[str], out_dir: str, spec: TextSpec, *, format: str = "parquet",
    eval_inputs: list[str] | None = None, eval_last_rows: int = 0, dense_mode: str = "log",
    freq_threshold: int = 1, hash_buckets: int | None = None, on_error: str = "raise",
    num_workers: int | None = None, block_bytes: int = 16 << 20, rows_per_file: int = 1 << 20,
    progress: bool = True, transform: Transform | None = None,
) -> PreprocessResult:
    """Fit (unless ``transform`` is given) and apply the transform; see module docstring."""
    if on_error not in ("raise", "skip"):
        raise ConfigError("preprocess(on_error=...)", "'raise' or 'skip'", on_error)
    if dense_mode not in ("log", "standardize", "none"):
        raise ConfigError("preprocess(dense_mode=...)", "'log', 'standardize' or 'none'",
                          dense_mode)
    part_cls = OUTPUT_FORMATS.get(format, "preprocess(format=...)")
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    eval_inputs = [eval_inputs] if isinstance(eval_inputs, str) else list(eval_inputs or [])
    if not inputs:
        raise DataError("<inputs>", "no input files given")
    workers = num_workers or os.cpu_count() or 1
    fitting = transform is None
    if transform is None:
        transform = Transform(spec.label or ["label"], spec.dense, _cat_names(spec), dense_mode,
                              freq_threshold, hash_buckets)
    else:  # before any worker process forks, so that they share the lookup tables
        transform.prepare(_threads(workers))
    write_shared = (spec, transform, part_cls, out_dir, on_error)
    # the line counting shares its processes with pass 1 (or, with a given transform, pass 2)
    with _Workers(workers, (spec, transform, on_error) if fitting else write_shared) as first:
        train_blocks = _BlockList(inputs, spec, block_bytes, first)
        eval_blocks = _BlockList(eval_inputs, spec, block_bytes, first)
        total = train_blocks.lines() if eval_last_rows else 0
        eval_start = total - eval_last_rows if eval_last_rows else 1 << 62
        if eval_last_rows and eval_start <= 0:
            raise ConfigError("preprocess(eval_last_rows=...)",
                              f"fewer than the {total} input rows", eval_last_rows)
        os.makedirs(out_dir, exist_ok=True)
        t0 = time.perf_counter()
        target = _part_rows(rows_per_file, workers, train_blocks, eval_blocks)
        if fitting:
            transform.fit(_fit(train_blocks, eval_start, first, on_error, progress, target),
                          threads=_threads(workers))
            first.close()
        with ThreadPoolExecutor(1) as saver:  # both are numpy work that releases the GIL
            saved = saver.submit(transform.save, out_dir)
            transform.prepare(_threads(workers))  # tables built once, shared by the workers
            saved.result()
        splits = {s: SplitParts(part_cls, out_dir, s, transform) for s in SPLITS}
        pairs = itertools.chain(((b, eval_start) for b in train_blocks),
                                ((b, -1) for b in eval_blocks))
        with (_Workers(workers, write_shared) if fitting else contextlib.nullcontext(first)
              ) as second:
            train_blocks.pool = eval_blocks.pool = second
            bad, n_bad = _write_parts(_part_tasks(pairs, target, _MAX_BAD), splits, second,
                                      on_error, progress)
    sources = {s: parts.close() for s, parts in splits.items()}
    res = PreprocessResult(
        out_dir=out_dir, format=part_cls.name, source=sources["train"],
        eval_source=sources["val"], train_files=splits["train"].files,
        eval_files=splits["val"].files, rows=sum(splits["train"].rows),
        eval_rows=sum(splits["val"].rows), slot_size_array=transform.slot_size_array,
        dense_dim=len(transform.dense_names), label_dim=len(transform.label_names),
        bad_rows=n_bad, bad_examples=bad, cat_names=transform.cat_names,
        seconds=time.perf_counter() - t0,
    )
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(res.to_json(), fh, indent=1)
    if progress:
        print(res.summary(), file=sys.stderr, flush=True)
    return res


#: bad rows listed per block and in the summary
_MAX_BAD = 100


class _BlockList:
    """The blocks of some input files, iterable more than once: listed once when every file
    is plain (references; the line counting pass runs once), read again for ``.gz`` files."""

    def __init__(self, paths: list[str], spec: TextSpec, block_bytes: int, pool: _Workers
                 ) -> None:
        self.args = (paths, spec, block_bytes)
        self.pool = pool  # counts the lines of plain files
        self.listed: list[Block] | None = None
        if not any(p.endswith(".gz") for p in paths):
            self.listed = list(_blocks(*self.args, pool))

    def __iter__(self) -> Iterator[Block]:
        return iter(self.listed) if self.listed is not None else _blocks(*self.args, self.pool)

    def lines(self) -> int:
        return sum(b[4] for b in self)


def _part_rows(rows_per_file: int, workers: int, *blocks: _BlockList) -> int:
    """Lines per pass-2 task: ``rows_per_file``, or fewer so that every worker gets about two
    parts when the (plain-file) input is small."""
    if any(b.listed is None for b in blocks) or workers <= 1:
        return max(1, rows_per_file)
    total = sum(b.lines() for b in blocks)
    return max(1, min(rows_per_file, -(-total // (2 * workers))))


def _check_bad(result: tuple, on_error: str, bad: list, n_bad: int) -> int:
    """Raise for a task's first bad row (``on_error="raise"``), else note its bad rows; returns
    the new bad-row count."""
    _, b, nb, _ = result
    if nb and on_error == "raise":
        path, line, msg = b[0]
        raise DataError(path, msg, row=line)
    bad.extend(b[: max(0, _MAX_BAD - len(bad))])
    return n_bad + nb


def _fit(blocks: _BlockList, eval_start: int, pool: _Workers, on_error: str, progress: bool,
         target: int) -> FitStats:
    """Pass 1: merged statistics of the training rows of every block; a task covers
    consecutive blocks (merged on its worker): for plain files the blocks split into equal runs
    (at least ``2 x workers`` of them, at most ``target`` lines each, as the workers finish
    together then), else grouped as in pass 2. The grouping does not change the result."""
    stats = FitStats()
    prog = _Progress("pass 1/2 (fit)", progress)
    pairs = [(b, eval_start) for b in blocks] if blocks.listed is not None else \
        ((b, eval_start) for b in blocks)
    tasks = _even_tasks(pairs, target, 2 * pool.workers) if isinstance(pairs, list) else \
        _part_tasks(pairs, target, _MAX_BAD)
    for result in pool.run(_fit_task, tasks):
        _check_bad(result, on_error, [], 0)
        stats = stats.merge(result[0], threads=_threads(pool.workers))
        prog.add(result[3])
    prog.add(0, final=True)
    return stats


def _write_parts(tasks: Iterator[tuple], splits: dict[str, SplitParts], pool: _Workers,
                 on_error: str, progress: bool) -> tuple[list, int]:
    """Pass 2: the workers write the parts; they are listed in task (= input) order. Returns
    (bad row examples, bad row count)."""
    bad: list[tuple[str, int, str]] = []
    n_bad = 0
    prog = _Progress("pass 2/2 (write)", progress)
    for result in pool.run(_apply_task, tasks):
        n_bad = _check_bad(result, on_error, bad, n_bad)
        for split, part in result[0].items():
            if part is not None:
                splits[split].add(*part)
        prog.add(result[3])
    prog.add(0, final=True)
    return bad, n_bad


def _threads(workers: int) -> int:
    """Threads for the main process's own numpy work (merging counts, building tables)."""
    return max(1, min(8, workers))


def _cat_names(spec: TextSpec) -> list[str]:
    return spec.cats if spec.kind != "libsvm" else [f"C{i + 1}" for i in range(spec.num_fields)]


__all__ = ["OUTPUT_FORMATS", "parquet_column_names", "preprocess_text", "read_header"]

"""Streaming, multiprocess two-pass preprocessing of text data into Parquet / Raw / Norm.

The input is cut into blocks of whole lines (~``block_bytes``, plain or ``.gz``). Pass 1 (fit)
parses the training blocks on a process pool and merges dense statistics and per-column value
counts; the fitted :class:`Transform` is saved (JSON). Pass 2 applies it on the pool too: every
task covers consecutive blocks, and its worker encodes and writes the rows of each split into
its own part file (:mod:`~terarec.data.preprocess.parts`), so encoding scales with the workers.
The main process only lists the parts in input order. Memory is bounded by the block size x
the number of blocks in flight (plus the vocabularies). Bad rows: ``on_error="raise"``
(default) stops at the first with file, line and field; ``"skip"`` drops them and lists them in
the summary.

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

import itertools
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor

import numpy as np

from terarec.data.preprocess.parts import OUTPUT_FORMATS, SPLITS, SplitParts
from terarec.data.preprocess.result import PreprocessResult
from terarec.data.preprocess.spec import TextSpec, parse_block
from terarec.data.preprocess.transform import FitStats, Transform
from terarec.data.readers.criteo_tsv import iter_counted_blocks, iter_line_blocks
from terarec.data.writers import parquet_column_names
from terarec.errors import ConfigError, DataError

#: (path, first line number, global data-row index of that line, block, lines in the block)
Block = tuple[str, int, int, "bytes | tuple", int]


def _blocks(paths: list[str], spec: TextSpec, block_bytes: int, workers: int = 1
            ) -> Iterator[Block]:
    """(path, first line number, global data-row index of that line, block, lines) per block.

    ``block`` is the bytes of whole lines or, for plain (not gzip) files, a reference
    ``(path, start, stop)`` that the worker process reads itself (:func:`_load`), so that the
    main process neither reads nor ships the data. Block boundaries are those of
    ``iter_line_blocks`` (the last newline within ``block_bytes``); their line counts are taken
    on the worker processes first (one parallel pass), so line numbers stay exact.
    """
    g = 0
    header_line: bytes | None = None
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(path, "input file does not exist")
        if path.endswith(".gz"):
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
            continue
        line0, start = 1, 0
        if spec.header:
            with open(path, "rb") as fh:
                head_raw = fh.readline()
            head = head_raw.rstrip(b"\n").rstrip(b"\r")
            if head_raw and (header_line is None or head == header_line):
                header_line = head
                line0, start = 2, len(head_raw)
        refs = [(path, a, b) for a, b in _cuts(path, start, block_bytes)]
        counts = list(_map(_count_lines, refs, workers))
        for ref, n in zip(refs, counts):
            yield path, line0, g, ref, n
            line0 += n
            g += n


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


def _map(fn: Callable, items: list, workers: int) -> Iterator:
    if workers <= 1 or len(items) <= 1:
        return map(fn, items)
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx) as pool:
        return iter(list(pool.map(fn, items)))


def read_header(path: str, sep: str) -> list[str]:
    for _, data in iter_line_blocks(path, 1 << 16):
        return data[: data.find(b"\n")].rstrip(b"\r").decode("utf-8").split(sep)
    raise DataError(path, "file is empty; expected a header line", row=1)


#: what every task of the running pass needs, set once per worker process (``_share``) so
#: that tasks carry only their blocks: (spec, transform) for the fit, plus (format class,
#: output directory, on_error) for the apply pass.
_SHARED: tuple = ()


def _share(shared: tuple) -> None:
    global _SHARED
    _SHARED = shared


def _parse(block: Block, max_bad: int):
    """Parse one block: (Parsed rows, bad rows as (path, line, problem))."""
    path, line0, _, data, _ = block
    p = parse_block(_SHARED[0], np.frombuffer(_load(data), np.uint8), line0, max_bad)
    return p, [(path, ln, msg) for ln, msg in p.bad]


def _is_eval(p, block: Block, eval_start: int) -> np.ndarray:
    """Which parsed rows of ``block`` go to the eval split (global row index >= eval_start)."""
    _, line0, g0, _, _ = block
    return (g0 + (p.lines - line0)) >= eval_start


def _fit_task(args: tuple) -> tuple:
    """Pass 1 on one block: (FitStats of its training rows, bad rows, bad count, rows)."""
    block, eval_start, max_bad = args
    transform = _SHARED[1]
    p, bad = _parse(block, max_bad)
    is_eval = _is_eval(p, block, eval_start)
    tr = p if not is_eval.any() else _rows(p, ~is_eval)
    return FitStats.of(tr, transform.hash_buckets is None), bad, p.n_bad, len(p.lines)


def _apply_task(args: tuple) -> tuple:
    """Pass 2 on consecutive blocks: write this task's part of each split.

    Returns ({split: (path, rows) or None}, bad rows, bad count, rows). With ``on_error=
    "raise"`` it stops at the first block with a bad row (the main process raises for it).
    """
    blocks, index, max_bad = args
    _, transform, part_cls, out_dir, on_error = _SHARED
    parts = {s: part_cls(out_dir, s, index, transform) for s in SPLITS}
    bad: list[tuple[str, int, str]] = []
    n_bad = n = 0
    try:
        for block, eval_start in blocks:
            p, b = _parse(block, max_bad)
            bad += b[: max(0, max_bad - len(bad))]
            n_bad, n = n_bad + p.n_bad, n + len(p.lines)
            if p.n_bad and on_error == "raise":
                break
            is_eval = _is_eval(p, block, eval_start)
            parts["train"].add(transform.apply(_rows(p, ~is_eval)))
            parts["val"].add(transform.apply(_rows(p, is_eval)))
    finally:
        written = {s: w.close() for s, w in parts.items()}
    return written, bad, n_bad, n


def _rows(p, keep):
    from terarec.data.preprocess.spec import _mask_rows

    return _mask_rows(p, keep)


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


def _run(fn: Callable[[tuple], tuple], tasks: Iterator[tuple], workers: int, shared: tuple
         ) -> Iterator[tuple]:
    """Map ``fn`` over ``tasks`` in order with at most ``2 * workers`` in flight; ``shared``
    is handed to every worker process once (``_SHARED``)."""
    if workers <= 1:
        _share(shared)
        for t in tasks:
            yield fn(t)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool: Executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_share,
                                         initargs=(shared,))
    try:
        pending: deque[Future] = deque()
        for t in tasks:
            pending.append(pool.submit(fn, t))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


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
    train_blocks = _BlockList(inputs, spec, block_bytes, workers)
    eval_blocks = _BlockList(eval_inputs, spec, block_bytes, workers)
    total = train_blocks.lines() if eval_last_rows else 0
    eval_start = total - eval_last_rows if eval_last_rows else 1 << 62
    if eval_last_rows and eval_start <= 0:
        raise ConfigError("preprocess(eval_last_rows=...)", f"fewer than the {total} input rows",
                          eval_last_rows)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    if transform is None:
        transform = Transform(spec.label or ["label"], spec.dense, _cat_names(spec), dense_mode,
                              freq_threshold, hash_buckets)
        transform.fit(_fit(train_blocks, eval_start, workers, (spec, transform), on_error,
                           progress))
    transform.save(out_dir)
    splits = {s: SplitParts(part_cls, out_dir, s, transform) for s in SPLITS}
    pairs = itertools.chain(((b, eval_start) for b in train_blocks),
                            ((b, -1) for b in eval_blocks))
    target = _part_rows(rows_per_file, workers, train_blocks, eval_blocks)
    bad, n_bad = _write_parts(_part_tasks(pairs, target, _MAX_BAD), splits, workers,
                              (spec, transform, part_cls, out_dir, on_error), on_error, progress)
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

    def __init__(self, paths: list[str], spec: TextSpec, block_bytes: int, workers: int) -> None:
        self.args = (paths, spec, block_bytes, workers)
        self.listed: list[Block] | None = None
        if not any(p.endswith(".gz") for p in paths):
            self.listed = list(_blocks(*self.args))

    def __iter__(self) -> Iterator[Block]:
        return iter(self.listed) if self.listed is not None else _blocks(*self.args)

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


def _fit(blocks: _BlockList, eval_start: int, workers: int, shared: tuple, on_error: str,
         progress: bool) -> FitStats:
    """Pass 1: merged statistics of the training rows of every block."""
    stats = FitStats()
    prog = _Progress("pass 1/2 (fit)", progress)
    tasks = ((b, eval_start, _MAX_BAD) for b in blocks)
    for result in _run(_fit_task, tasks, workers, shared):
        _check_bad(result, on_error, [], 0)
        stats = stats.merge(result[0])
        prog.add(result[3])
    prog.add(0, final=True)
    return stats


def _write_parts(tasks: Iterator[tuple], splits: dict[str, SplitParts], workers: int,
                 shared: tuple, on_error: str, progress: bool) -> tuple[list, int]:
    """Pass 2: the workers write the parts; they are listed in task (= input) order. Returns
    (bad row examples, bad row count)."""
    bad: list[tuple[str, int, str]] = []
    n_bad = 0
    prog = _Progress("pass 2/2 (write)", progress)
    for result in _run(_apply_task, tasks, workers, shared):
        n_bad = _check_bad(result, on_error, bad, n_bad)
        for split, part in result[0].items():
            if part is not None:
                splits[split].add(*part)
        prog.add(result[3])
    prog.add(0, final=True)
    return bad, n_bad


def _cat_names(spec: TextSpec) -> list[str]:
    return spec.cats if spec.kind != "libsvm" else [f"C{i + 1}" for i in range(spec.num_fields)]


__all__ = ["OUTPUT_FORMATS", "parquet_column_names", "preprocess_text", "read_header"]

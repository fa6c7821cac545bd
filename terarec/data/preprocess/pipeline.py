"""Streaming, multiprocess two-pass preprocessing of text data into Parquet / Raw / Norm.

Pass 1 (fit) reads the training rows block by block (~16 MiB of whole lines, plain or ``.gz``)
on a process pool and merges dense statistics and per-column value counts; the fitted
:class:`Transform` is saved (JSON). Pass 2 applies it and the main process writes the output in
input order. Memory is bounded by the block size x the number of blocks in flight (plus the
vocabularies). Bad rows: ``on_error="raise"`` (default) stops at the first with file, line and
field; ``"skip"`` drops them and lists them in the summary.

Output layout (``out_dir``): ``train/`` and ``val/`` each with ``part_<k>.parquet`` +
``_file_list.txt`` + ``_metadata.json`` (format ``"parquet"``), ``<split>_data.bin``
(``"raw"`` = RawAsync one-hot: int32 label, float32 dense, uint32 per-slot ids) or
``part_<k>.data`` + ``_file_list.txt`` (``"norm"``: Check_t.Sum, global keys = id + slot offset);
``transform.json`` + ``vocab.json``; ``summary.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from terarec.data.preprocess.result import PreprocessResult
from terarec.data.preprocess.spec import TextSpec, parse_block
from terarec.data.preprocess.transform import FitStats, Transform
from terarec.data.readers.chunk import Chunk, fixed_lengths
from terarec.data.readers.criteo_tsv import iter_counted_blocks, iter_line_blocks
from terarec.data.writers import (
    parquet_column_names,
    write_file_list,
    write_norm,
    write_parquet,
    write_parquet_metadata,
    write_raw_async,
)
from terarec.errors import ConfigError, DataError
from terarec.utils.registry import Registry

OUTPUT_FORMATS: Registry[type] = Registry("preprocessing output format")


def _blocks(paths: list[str], spec: TextSpec, block_bytes: int, workers: int = 1
            ) -> Iterator[tuple[str, int, int, bytes | tuple]]:
    """(path, first line number, global data-row index of that line, block) for every block.

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
                    yield path, line0, g, data
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
            yield path, line0, g, ref
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


#: (spec, transform) of the running pass, set once per worker process (``_share``) so that
#: tasks carry only their block, not the vocabularies.
_SHARED: tuple = ()


def _share(shared: tuple) -> None:
    global _SHARED
    _SHARED = shared


def _task(args: tuple) -> tuple:
    mode, path, line0, g0, block, eval_start, max_bad = args
    spec, transform = _SHARED
    p = parse_block(spec, np.frombuffer(_load(block), np.uint8), line0, max_bad)
    bad = [(path, ln, msg) for ln, msg in p.bad]
    is_eval = (g0 + (p.lines - line0)) >= eval_start
    if mode == "fit":
        tr = p if not is_eval.any() else _rows(p, ~is_eval)
        return FitStats.of(tr, transform.hash_buckets is None), bad, p.n_bad, len(p.lines)
    tr, ev = _rows(p, ~is_eval), _rows(p, is_eval)
    return (_ship(transform.apply(tr)), _ship(transform.apply(ev))), bad, p.n_bad, len(p.lines)


def _ship(c: Chunk) -> tuple:
    """A one-key-per-slot chunk without its ``lengths`` (all ones): what a worker sends back."""
    return c.labels, c.dense, c.keys[0], c.lengths[0].shape[1]


def _unship(t: tuple) -> Chunk:
    labels, dense, keys, S = t
    return Chunk(labels, dense, [keys], [fixed_lengths(len(labels), [1] * S)])


def _rows(p, keep):
    from terarec.data.preprocess.spec import _mask_rows

    return _mask_rows(p, keep)


def _run(tasks: Iterator[tuple], workers: int, shared: tuple) -> Iterator[tuple]:
    """Map ``_task`` over ``tasks`` in order with at most ``2 * workers`` in flight; ``shared``
    = (spec, transform) is handed to every worker process once."""
    if workers <= 1:
        _share(shared)
        for t in tasks:
            yield _task(t)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool: Executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_share,
                                         initargs=(shared,))
    try:
        pending: deque[Future] = deque()
        for t in tasks:
            pending.append(pool.submit(_task, t))
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


class _Output:
    """Accumulates chunks of one split and writes files of ``rows_per_file`` rows.

    Complete files are encoded and written on ``writers`` background threads (pyarrow and
    numpy release the GIL), at most ``writers`` files in flight; ``close`` waits for all of them
    and re-raises a failed write.
    """

    ext = ""

    def __init__(self, directory: str, t: Transform, rows_per_file: int, writers: int = 1) -> None:
        self.dir, self.t, self.rows_per_file = directory, t, rows_per_file
        os.makedirs(directory, exist_ok=True)
        self.buf: list[Chunk] = []
        self.have = 0
        self.files: list[str] = []
        self.rows: list[int] = []
        self.writers = max(1, writers)
        self._pool: ThreadPoolExecutor | None = None
        self._writing: deque[Future] = deque()

    def add(self, c: Chunk) -> None:
        if len(c):
            self.buf.append(c)
            self.have += len(c)
        while self.have >= self.rows_per_file:
            whole = Chunk.concat(self.buf)
            self._flush(whole.slice(0, self.rows_per_file))
            rest = whole.slice(self.rows_per_file, len(whole))
            self.buf, self.have = ([rest] if len(rest) else []), len(rest)

    def _flush(self, c: Chunk) -> None:
        path = os.path.join(self.dir, f"part_{len(self.files):05d}{self.ext}")
        self.files.append(path)
        self.rows.append(len(c))
        if self.writers == 1:
            self.write(path, c)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.writers, thread_name_prefix="terarec-write")
        self._writing.append(self._pool.submit(self.write, path, c))
        while len(self._writing) > self.writers:
            self._writing.popleft().result()

    def wait(self) -> None:
        """Finish the background writes (re-raising the first failure); idempotent."""
        try:
            while self._writing:
                self._writing.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def close(self) -> str:
        if self.have or not self.files:
            self._flush(Chunk.concat(self.buf) if self.buf else _empty(self.t))
        self.wait()
        src = os.path.join(self.dir, "_file_list.txt")
        write_file_list(src, self.files)
        return src

    def write(self, path: str, c: Chunk) -> None:
        raise NotImplementedError


def _empty(t: Transform) -> Chunk:
    L, D, S = len(t.label_names), len(t.dense_names), len(t.cat_names)
    return Chunk(np.zeros((0, L), np.float32), np.zeros((0, D), np.float32),
                 [np.zeros(0, np.int64)], [np.zeros((0, S), np.int64)])


@OUTPUT_FORMATS.register("parquet", "Parquet")
class _ParquetOut(_Output):
    ext = ".parquet"

    def write(self, path: str, c: Chunk) -> None:
        write_parquet(path, c, i64_input_key=True, multi_hot=False, names=self.names())

    def names(self) -> tuple[list, list, list]:
        t = self.t
        return (t.label_names, t.dense_names, t.cat_names)

    def close(self) -> str:
        src = super().close()
        write_parquet_metadata(self.dir, self.files, self.rows, self.names())
        return src


@OUTPUT_FORMATS.register("norm", "Norm")
class _NormOut(_Output):
    ext = ".data"

    def write(self, path: str, c: Chunk) -> None:
        sizes = self.t.slot_size_array
        off = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        S = len(sizes)
        keys = (c.keys[0].reshape(-1, S) + off).reshape(-1) if S else c.keys[0]
        i64 = sum(sizes) > 0xFFFFFFFF
        write_norm(path, Chunk(c.labels, c.dense, [keys], c.lengths), check_type="Sum",
                   i64_input_key=i64)


@OUTPUT_FORMATS.register("raw", "RawAsync", "Raw")
class _RawOut(_Output):
    def __init__(self, directory: str, t: Transform, rows_per_file: int, writers: int = 1) -> None:
        super().__init__(os.path.dirname(directory) or ".", t, 1 << 62)  # appends: serial
        self.path = os.path.join(self.dir, f"{os.path.basename(directory)}_data.bin")
        open(self.path, "wb").close()
        self.n = 0

    def add(self, c: Chunk) -> None:
        write_raw_async(self.path, c, i64_input_key=False, is_dense_float=True, append=True)
        self.n += len(c)

    def close(self) -> str:
        self.rows = [self.n]
        self.files = [self.path]
        return self.path


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
    out_cls = OUTPUT_FORMATS.get(format, "preprocess(format=...)")
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    eval_inputs = [eval_inputs] if isinstance(eval_inputs, str) else list(eval_inputs or [])
    if not inputs:
        raise DataError("<inputs>", "no input files given")
    workers = num_workers or os.cpu_count() or 1
    max_bad = 100
    total = _count_rows(inputs, spec, block_bytes, workers) if eval_last_rows else 0
    eval_start = total - eval_last_rows if eval_last_rows else 1 << 62
    if eval_last_rows and eval_start <= 0:
        raise ConfigError("preprocess(eval_last_rows=...)", f"fewer than the {total} input rows",
                          eval_last_rows)
    bad: list[tuple[str, int, str]] = []
    n_bad = 0

    def consume(results: Iterator[tuple], each: Callable, prog: _Progress) -> None:
        nonlocal n_bad
        for out, b, nb, n in results:
            if nb and on_error == "raise":
                path, line, msg = b[0]
                raise DataError(path, msg, row=line)
            bad.extend(b[: max(0, 100 - len(bad))])
            n_bad += nb
            each(out)
            prog.add(n)

    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    if transform is None:
        transform = Transform(spec.label or ["label"], spec.dense, _cat_names(spec), dense_mode,
                              freq_threshold, hash_buckets)
        stats = FitStats()
        prog = _Progress("pass 1/2 (fit)", progress)

        def merge(st: FitStats) -> None:
            nonlocal stats
            stats = stats.merge(st)

        consume(_run(((("fit", *b, eval_start, max_bad)
                       for b in _blocks(inputs, spec, block_bytes, workers))), workers,
                     (spec, transform)),
                merge, prog)
        prog.add(0, final=True)
        transform.fit(stats)
        n_bad = 0
        bad.clear()
    transform.save(out_dir)
    outs = {s: out_cls(os.path.join(out_dir, s), transform, rows_per_file,
                       max(1, min(8, workers // 2)))
            for s in ("train", "val")}
    prog = _Progress("pass 2/2 (write)", progress)

    def write(pair: tuple[tuple, tuple]) -> None:
        outs["train"].add(_unship(pair[0]))
        outs["val"].add(_unship(pair[1]))

    try:
        consume(_run((("apply", *b, eval_start, max_bad)
                      for b in _blocks(inputs, spec, block_bytes, workers)), workers,
                     (spec, transform)),
                write, prog)
        for path, *rest in _blocks(eval_inputs, spec, block_bytes):
            consume(_run(iter([("apply", path, *rest, -1, max_bad)]), 1, (spec, transform)),
                    write, prog)
        prog.add(0, final=True)
        sources = {s: o.close() for s, o in outs.items()}
    finally:
        for o in outs.values():
            o.wait()
    res = PreprocessResult(
        out_dir=out_dir, format=out_cls.__name__.strip("_").replace("Out", "").lower(),
        source=sources["train"], eval_source=sources["val"],
        train_files=outs["train"].files, eval_files=outs["val"].files,
        rows=sum(outs["train"].rows), eval_rows=sum(outs["val"].rows),
        slot_size_array=transform.slot_size_array, dense_dim=len(transform.dense_names),
        label_dim=len(transform.label_names), bad_rows=n_bad, bad_examples=bad,
        cat_names=transform.cat_names, seconds=time.perf_counter() - t0,
    )
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(res.to_json(), fh, indent=1)
    if progress:
        print(res.summary(), file=sys.stderr, flush=True)
    return res


def _cat_names(spec: TextSpec) -> list[str]:
    return spec.cats if spec.kind != "libsvm" else [f"C{i + 1}" for i in range(spec.num_fields)]


def _count_rows(paths: list[str], spec: TextSpec, block_bytes: int, workers: int = 1) -> int:
    last: tuple = ("", 0, 0, b"")
    for b in _blocks(paths, spec, block_bytes, workers):
        last = b
    return last[2] + _load(last[3]).count(b"\n")  # rows before the last block + its rows


__all__ = ["OUTPUT_FORMATS", "parquet_column_names", "preprocess_text", "read_header"]

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
from concurrent.futures import Executor, Future, ProcessPoolExecutor

import numpy as np

from terarec.data.preprocess.result import PreprocessResult
from terarec.data.preprocess.spec import TextSpec, parse_block
from terarec.data.preprocess.transform import FitStats, Transform
from terarec.data.readers.chunk import Chunk
from terarec.data.readers.criteo_tsv import iter_line_blocks
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


def _blocks(paths: list[str], spec: TextSpec, block_bytes: int
            ) -> Iterator[tuple[str, int, int, bytes]]:
    """(path, first line number, global data-row index of that line, bytes) for every block."""
    g = 0
    header_line: bytes | None = None
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(path, "input file does not exist")
        first = True
        for line0, data in iter_line_blocks(path, block_bytes):
            if first and spec.header:
                nl = data.find(b"\n")
                head = data[:nl].rstrip(b"\r")
                if header_line is None or head == header_line:
                    header_line = head
                    data, line0 = data[nl + 1:], line0 + 1
            first = False
            if data:
                yield path, line0, g, data
                g += data.count(b"\n")


def read_header(path: str, sep: str) -> list[str]:
    for _, data in iter_line_blocks(path, 1 << 16):
        return data[: data.find(b"\n")].rstrip(b"\r").decode("utf-8").split(sep)
    raise DataError(path, "file is empty; expected a header line", row=1)


def _task(args: tuple) -> tuple:
    mode, spec, transform, path, line0, g0, data, eval_start, max_bad = args
    p = parse_block(spec, np.frombuffer(data, np.uint8), line0, max_bad)
    bad = [(path, ln, msg) for ln, msg in p.bad]
    is_eval = (g0 + (p.lines - line0)) >= eval_start
    if mode == "fit":
        tr = p if not is_eval.any() else _rows(p, ~is_eval)
        return FitStats.of(tr, transform.hash_buckets is None), bad, p.n_bad, len(p.lines)
    tr, ev = _rows(p, ~is_eval), _rows(p, is_eval)
    return (transform.apply(tr), transform.apply(ev)), bad, p.n_bad, len(p.lines)


def _rows(p, keep):
    from terarec.data.preprocess.spec import _mask_rows

    return _mask_rows(p, keep)


def _run(tasks: Iterator[tuple], workers: int) -> Iterator[tuple]:
    """Map ``_task`` over ``tasks`` in order with at most ``2 * workers`` in flight."""
    if workers <= 1:
        for t in tasks:
            yield _task(t)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool: Executor = ProcessPoolExecutor(workers, mp_context=ctx)
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
    """Accumulates chunks of one split and writes files of ``rows_per_file`` rows."""

    ext = ""

    def __init__(self, directory: str, t: Transform, rows_per_file: int) -> None:
        self.dir, self.t, self.rows_per_file = directory, t, rows_per_file
        os.makedirs(directory, exist_ok=True)
        self.buf: list[Chunk] = []
        self.have = 0
        self.files: list[str] = []
        self.rows: list[int] = []

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
        self.write(path, c)
        self.files.append(path)
        self.rows.append(len(c))

    def close(self) -> str:
        if self.have or not self.files:
            self._flush(Chunk.concat(self.buf) if self.buf else _empty(self.t))
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
    def __init__(self, directory: str, t: Transform, rows_per_file: int) -> None:
        super().__init__(os.path.dirname(directory) or ".", t, 1 << 62)
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
    total = _count_rows(inputs, spec, block_bytes) if eval_last_rows else 0
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

        consume(_run(((("fit", spec, transform, *b, eval_start, max_bad)
                       for b in _blocks(inputs, spec, block_bytes))), workers), merge, prog)
        prog.add(0, final=True)
        transform.fit(stats)
        n_bad = 0
        bad.clear()
    transform.save(out_dir)
    outs = {s: out_cls(os.path.join(out_dir, s), transform, rows_per_file)
            for s in ("train", "val")}
    prog = _Progress("pass 2/2 (write)", progress)

    def write(pair: tuple[Chunk, Chunk]) -> None:
        outs["train"].add(pair[0])
        outs["val"].add(pair[1])

    consume(_run((("apply", spec, transform, *b, eval_start, max_bad)
                  for b in _blocks(inputs, spec, block_bytes)), workers), write, prog)
    for path, *rest in _blocks(eval_inputs, spec, block_bytes):
        consume(_run(iter([("apply", spec, transform, path, *rest, -1, max_bad)]), 1), write, prog)
    prog.add(0, final=True)
    sources = {s: o.close() for s, o in outs.items()}
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


def _count_rows(paths: list[str], spec: TextSpec, block_bytes: int) -> int:
    return sum(data.count(b"\n") for *_, data in _blocks(paths, spec, block_bytes))


__all__ = ["OUTPUT_FORMATS", "parquet_column_names", "preprocess_text", "read_header"]

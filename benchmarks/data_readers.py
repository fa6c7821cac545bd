"""Rows/s of every reader (Criteo layout: 1 label, 13 dense, 26 one-hot slots) and of preprocessing.

Usage: python benchmarks/data_readers.py [--samples 2000000] [--workers N [N ...]]
                                         [--repeat 3] [--only Raw Parquet ...] [--text-copies 10]
                                         [--what decode reader prefetch busy]
``--only`` (alias ``--formats``, any case) picks formats: Raw RawAsync Parquet Norm, CriteoTSV (the
text reader and preprocessing), Preprocess (preprocessing alone); ``--what`` picks the rows of the
binary formats. Prints a markdown table, one row per (format, what, workers). "decode" = the
format's decoder over all units on a thread pool of N threads (no batching); "reader" = full
Reader iteration with ``num_workers=N`` (batch 65536, torch tensors out); "prefetch" = the same
through the
``Prefetcher`` (one background thread, as ``Model.fit`` reads); "prefetch, busy main" = the same
while another thread runs pure Python (holding the GIL like a training loop's op dispatch; with
the GIL switch interval ``Model.fit`` sets, ``loader.share_gil``). "rows/s" is wall-clock, the best
of ``--repeat`` runs (the box may be shared); "rows/CPU-s" divides by the CPU time of the whole
process (all threads, plus reaped worker processes) of that run, i.e. the throughput of one fully
used core (the busy thread's CPU counts too). Text rows: the Criteo sample repeated
``--text-copies`` times; preprocessing (``terarec preprocess criteo``, Parquet out, both passes)
uses N worker processes (``--workers``), which also write the part files.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from terarec.data import Prefetcher, arrowtext
from terarec.data.loader import share_gil
from terarec.data.preprocess import preprocess_criteo
from terarec.data.readers import READERS, FormatSource, ReaderConfig, create_reader
from terarec.data.schema import DataSchema, SparseSpec
from terarec.data.synthetic import SynthSpec, make_samples
from terarec.data.writers import WRITERS, write_file_list

SIZES = [1000] * 26
CRITEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo_kaggle_sample" / \
    "train_head10k.txt"


def _write(d: str, fmt: str, n: int, files: int) -> str:
    spec = SynthSpec(SIZES, [1] * 26, 1, 13, 1.2, int_dense=fmt == "Raw", fixed_hotness=True,
                     norm_keys=fmt == "Norm", teacher=False)
    ext = ".parquet" if fmt == "Parquet" else ".bin"
    paths = []
    for i in range(files):
        c, _ = make_samples(spec, n // files, np.random.default_rng(i), None)
        p = os.path.join(d, f"{fmt}_{i}{ext}")
        WRITERS.get(fmt)(p, c, append=i > 0 and fmt.startswith("Raw"), i64_input_key=False)
        if fmt.startswith("Raw"):
            p = os.path.join(d, f"{fmt}_0{ext}")
        paths.append(p)
    if fmt in ("Norm", "Parquet"):
        src = os.path.join(d, f"{fmt}.txt")
        write_file_list(src, paths)
        return src
    return paths[0]


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (preprocessing workers)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


class _Timer:
    """Wall-clock and CPU time (this process + reaped child processes) of a block."""

    def __enter__(self) -> _Timer:
        self.t, self.c = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t
        self.cpu = max(_cpu() - self.c, 1e-9)


class _Busy:
    """A pure-Python thread holding the GIL as a training loop's op dispatch does."""

    def __enter__(self) -> _Busy:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        return self

    def _spin(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


Row = tuple[str, str, int, int, float, float]


def _best(repeat: int, run: Callable[[], int]) -> tuple[int, float, float]:
    """(rows, best rows/s, rows/CPU-s of that run) over ``repeat`` runs of ``run``."""
    best = (0, 0.0, 0.0)
    for _ in range(max(1, repeat)):
        with _Timer() as tm:
            total = run()
        if total / tm.wall > best[1]:
            best = (total, total / tm.wall, total / tm.cpu)
    return best


WHAT = ("decode", "reader", "prefetch", "busy")
FORMATS = ("Raw", "RawAsync", "Parquet", "Norm", "CriteoTSV", "Preprocess")


def bench_binary(d: str, fmt: str, n: int, workers: list[int], repeat: int,
                 what: tuple[str, ...] = WHAT) -> list[Row]:
    sch = DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])
    src = _write(d, fmt, n, 1 if fmt.startswith("Raw") else 16)
    sizes = SIZES if fmt in ("RawAsync", "Parquet") else []
    rows: list[Row] = []
    for w in workers:
        cfg = ReaderConfig(fmt, src, slot_size_array=sizes, num_workers=w)
        source = READERS.get(fmt)(cfg, sch)
        units = []
        for i, p in enumerate(source.paths):
            units += [(p, a, b) for a, b in source.pieces(i, 0, source.counts[i])]
        list(source.decode(*units[0]))  # warm-up: lazy imports, tables

        def decode(source: FormatSource = source, units: list = units, w: int = w) -> int:
            with ThreadPoolExecutor(w) as pool:
                return sum(sum(len(c) for c in cs) for cs in
                           pool.map(lambda u: list(source.decode(*u)), units))

        def read(cfg: ReaderConfig = cfg, prefetch: bool = False, busy: bool = False) -> int:
            r = create_reader(cfg, sch, 65536, repeat=False, drop_incomplete_batch=False)
            it = Prefetcher(r, "cpu", depth=2, num_threads=1) if prefetch else r
            with _Busy() if busy else contextlib.nullcontext():
                return sum(b.batch_size for b in it)

        runs = {"decode": ("decode", decode), "reader": ("reader", read),
                "prefetch": ("prefetch", lambda: read(prefetch=True)),
                "busy": ("prefetch, busy main", lambda: read(prefetch=True, busy=True))}
        for key in what:
            name, run = runs[key]
            rows.append((fmt, name, w, *_best(repeat, run)))
    return rows


def bench_text(d: str, copies: int, workers: list[int], repeat: int, reader: bool = True
               ) -> list[Row]:
    sch = DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])
    big = os.path.join(d, "criteo.txt")
    with open(CRITEO, "rb") as fh:
        data = fh.read()
    with open(big, "wb") as fh:
        for _ in range(copies):
            fh.write(data)
    rows: list[Row] = []
    for w in workers:
        def prep(w: int = w) -> int:
            out = os.path.join(d, "pp")
            shutil.rmtree(out, ignore_errors=True)
            return preprocess_criteo(big, out, num_workers=w, block_bytes=4 << 20,
                                     progress=False).rows

        def read(w: int = w) -> int:
            cfg = ReaderConfig("CriteoTSV", big, slot_size_array=[1000] * 26, num_workers=w)
            return sum(b.batch_size for b in create_reader(cfg, sch, 65536, repeat=False,
                                                           drop_incomplete_batch=False))

        rows.append(("Criteo TSV -> Parquet", "preprocess (2 passes)", w, *_best(repeat, prep)))
        if reader:
            rows.append(("CriteoTSV", "reader", w, *_best(repeat, read)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1])
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    ap.add_argument("--only", "--formats", nargs="*", default=None,
                    help=f"formats to run ({' '.join(FORMATS)}; any case); default all but "
                         "Preprocess (CriteoTSV runs it)")
    ap.add_argument("--what", nargs="*", default=list(WHAT), choices=WHAT,
                    help="rows of the binary formats (busy = prefetch next to a busy thread)")
    ap.add_argument("--text-copies", type=int, default=10,
                    help="copies of the 10k-row Criteo sample for the text rows")
    a = ap.parse_args()
    share_gil()  # as Model.fit's reader does
    names = {f.lower(): f for f in FORMATS}
    unknown = [f for f in a.only or [] if f.lower() not in names]
    if unknown:
        ap.error(f"unknown format(s) {unknown}; choose from {' '.join(FORMATS)}")
    only = {names[f.lower()] for f in a.only} if a.only else set(FORMATS[:5])
    print(f"# data readers, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, workers={a.workers}, samples={a.samples}, "
          f"best of {a.repeat}, text parser: {'pyarrow' if arrowtext.available() else 'numpy'}")
    print("| format | what | workers | rows | rows/s | rows/CPU-s |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for fmt in FORMATS:
            if fmt not in only or (fmt == "Preprocess" and "CriteoTSV" in only):
                continue
            if fmt in ("CriteoTSV", "Preprocess"):
                rows = bench_text(d, a.text_copies, a.workers, a.repeat,
                                  reader=fmt == "CriteoTSV") if CRITEO.exists() else []
            else:
                rows = bench_binary(d, fmt, a.samples, a.workers, a.repeat, tuple(a.what))
            for name, what, w, n, rate, per_cpu in rows:
                cpu = "-" if math.isnan(per_cpu) else f"{per_cpu:,.0f}"
                print(f"| {name} | {what} | {w} | {n:,} | {rate:,.0f} | {cpu} |", flush=True)


if __name__ == "__main__":
    main()

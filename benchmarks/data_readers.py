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
used core (the busy thread's CPU counts too). Text rows: ``--text-copies`` x 10,000 rows of
Criteo TSV: the real Kaggle sample (``CRITEO``) repeated, or, when that file is absent (or with
``--synthetic-text``), a synthetic Criteo-format file of that many distinct rows (label, 13
integer columns with empty fields and negatives, 26 categorical 8-hex-digit columns with empty
fields, power-law values; :func:`synth_criteo_tsv`); the header says which. Preprocessing
(``terarec preprocess criteo``, Parquet out, both passes) uses N worker processes
(``--workers``), which also write the part files.
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


# Synthetic Criteo TSV: per-column shapes taken from the Kaggle sample (missing rates, value
# ranges) and the Kaggle day's categorical cardinalities.
_I_MISSING = (.45, .00, .20, .20, .05, .25, .05, .00, .05, .45, .05, .77, .20)
_I_MAX = (214, 18522, 65535, 280, 1618112, 12167, 1658, 682, 7335, 6, 79, 98, 770)
_C_MISSING = (.00, .00, .04, .04, .00, .13, .00, .00, .00, .00, .00, .04, .00, .00, .00, .04,
              .00, .00, .45, .45, .04, .82, .00, .04, .45, .45)
_C_VOCAB = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
            27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)


def _power_law(rng: np.random.Generator, n: int, top: int, skew: float = 2.0) -> np.ndarray:
    """Integers in ``[0, top]``, heavy head and long tail: ``floor((top + 1) ** u**skew) - 1``
    for uniform ``u`` (log-uniform for skew 1, more mass near 0 for larger skew)."""
    u = rng.random(n) ** skew
    return np.minimum(np.floor(np.exp(u * np.log(top + 1.0))) - 1, top).astype(np.int64)


def _digits(v: np.ndarray, out: np.ndarray, valid: np.ndarray) -> None:
    """Decimal text of ints into the ``(n, width)`` byte block ``out`` (width: room for the
    digits and a ``-``), right aligned; ``valid`` (same shape) is set where the text is."""
    n, width = out.shape
    neg = v < 0
    a = np.abs(v)
    used = np.ones(n, np.int64)
    for j in range(width - 1, -1, -1):
        out[:, j] = 48 + a % 10
        a //= 10
        if j:
            used += a > 0
    used += neg
    valid[:] = np.arange(width)[None, :] >= (width - used)[:, None]
    rows = np.flatnonzero(neg)
    out[rows, width - used[rows]] = ord("-")


#: the two lowercase hex digits of every byte value, as one uint16 (memory order = text order)
_HEX2 = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), np.uint16)


def _synth_rows(seed: tuple[int, int], n: int) -> bytes:
    """``n`` rows of Criteo TSV (label, I1-I13, C1-C26; empty field = missing), from the random
    stream ``seed``: each field written into its columns of one ``(n, width)`` byte matrix,
    then the unused bytes dropped row by row (one boolean gather)."""
    rng = np.random.default_rng(seed)
    widths = [1] + [len(str(top)) + 1 for top in _I_MAX] + [8] * len(_C_VOCAB)
    W = sum(widths) + len(widths)  # + one tab / newline after each field
    mat = np.empty((n, W), np.uint8)
    keep = np.ones((n, W), bool)
    c0 = 0

    def field(w: int) -> tuple[np.ndarray, np.ndarray]:
        nonlocal c0
        cols = slice(c0, c0 + w)
        mat[:, c0 + w] = 9 if c0 + w + 1 < W else 10
        c0 += w + 1
        return mat[:, cols], keep[:, cols]

    out, valid = field(1)
    _digits((rng.random(n) < 0.22).astype(np.int64), out, valid)
    for j, (miss, top) in enumerate(zip(_I_MISSING, _I_MAX)):
        v = _power_law(rng, n, top, 1.0 if top > 100_000 else 2.0)
        if j == 1:  # I2 has small negative values (-1..-3) in ~10% of the rows
            neg = rng.random(n) < 0.1
            v[neg] = -rng.integers(1, 4, int(neg.sum()))
        out, valid = field(widths[1 + j])
        _digits(v, out, valid)
        valid &= (rng.random(n) >= miss)[:, None]
    for j, (miss, vocab) in enumerate(zip(_C_MISSING, _C_VOCAB)):
        rank = _power_law(rng, n, vocab - 1)
        # a bijection of uint32 (odd multiplier), so ranks map to distinct, random-looking ids
        ids = ((rank * 0x9E3779B1 + 0x85EBCA6B * (j + 1)) & 0xFFFFFFFF).astype(">u4")
        out, valid = field(8)
        out[:] = _HEX2[ids.view(np.uint8).reshape(n, 4)].view(np.uint8)
        valid[:] = (rng.random(n) >= miss)[:, None]
    return mat[keep].tobytes()


def synth_criteo_tsv(path: str, rows: int, seed: int = 0, block: int = 50_000) -> None:
    """Write ``rows`` rows of synthetic Criteo-format TSV (as Kaggle ``train.txt``) to ``path``;
    blocks are generated on a thread pool (numpy releases the GIL), written in order. The
    file depends only on ``rows``, ``seed`` and ``block``."""
    starts = range(0, rows, block)
    with open(path, "wb") as fh, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for data in pool.map(lambda a: _synth_rows((seed, a), min(block, rows - a)), starts):
            fh.write(data)


def text_source(synthetic: bool) -> tuple[bool, str]:
    """(use the synthetic file, a line saying which text source the text rows read)."""
    if synthetic:
        return True, "synthetic Criteo-format TSV (--synthetic-text)"
    if not CRITEO.exists():
        return True, f"synthetic Criteo-format TSV (the Criteo sample {CRITEO} is absent)"
    return False, f"the Criteo Kaggle sample {CRITEO} repeated"


def bench_text(d: str, copies: int, workers: list[int], repeat: int, reader: bool = True,
               synthetic: bool = False) -> list[Row]:
    sch = DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])
    big = os.path.join(d, "criteo.txt")
    if synthetic:
        synth_criteo_tsv(big, copies * 10_000)
    else:
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
                    help="text rows in units of 10,000 (copies of the 10k-row Criteo sample, or "
                         "as many synthetic rows)")
    ap.add_argument("--synthetic-text", action="store_true",
                    help="text rows from a synthetic Criteo-format TSV even when the Criteo "
                         "sample exists (it is used anyway when the sample is absent)")
    a = ap.parse_args()
    if a.samples < 1 or a.text_copies < 1 or min(a.workers) < 1:
        ap.error("--samples, --text-copies and --workers must be >= 1")
    share_gil()  # as Model.fit's reader does
    names = {f.lower(): f for f in FORMATS}
    unknown = [f for f in a.only or [] if f.lower() not in names]
    if unknown:
        ap.error(f"unknown format(s) {unknown}; choose from {' '.join(FORMATS)}")
    only = {names[f.lower()] for f in a.only} if a.only else set(FORMATS[:5])
    if "CriteoTSV" in only:
        only.discard("Preprocess")  # CriteoTSV runs preprocessing too
    text = [f for f in FORMATS if f in only and f in ("CriteoTSV", "Preprocess")]
    binary = [f for f in FORMATS if f in only and f not in text]
    print(f"# data readers, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, workers={a.workers}, samples={a.samples}, "
          f"best of {a.repeat}, text parser: {'pyarrow' if arrowtext.available() else 'numpy'}")
    synthetic, what_text = text_source(a.synthetic_text)
    if text:
        print(f"# text rows ({a.text_copies * 10_000:,}): {what_text}")
    notes = []
    if binary and not a.what:
        notes.append(f"nothing to run for {' '.join(binary)}: --what is empty")
        binary = []
    elif not binary and not text:
        notes.append("nothing to run: no format selected")
    printed = 0
    if binary or text:
        print("| format | what | workers | rows | rows/s | rows/CPU-s |")
        print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for fmt in binary + text:
            if fmt in text:
                rows = bench_text(d, a.text_copies, a.workers, a.repeat,
                                  reader=fmt == "CriteoTSV", synthetic=synthetic)
            else:
                rows = bench_binary(d, fmt, a.samples, a.workers, a.repeat, tuple(a.what))
            if not rows:
                notes.append(f"{fmt}: no rows measured")
            for name, what, w, n, rate, per_cpu in rows:
                cpu = "-" if math.isnan(per_cpu) else f"{per_cpu:,.0f}"
                print(f"| {name} | {what} | {w} | {n:,} | {rate:,.0f} | {cpu} |", flush=True)
                printed += 1
    for note in notes:
        print(f"# {note}")
    if not printed:
        raise SystemExit("data_readers: no rows were measured (see the lines above)")


if __name__ == "__main__":
    main()

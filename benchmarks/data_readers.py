"""Rows/s of every reader (Criteo layout: 1 label, 13 dense, 26 one-hot slots) and of preprocessing.

Usage: python benchmarks/data_readers.py [--samples 2000000] [--workers N]
Prints a markdown table. "decode" = the format's decoder over all units on a thread pool
(no batching); "reader" = full Reader iteration (batch 65536, torch tensors out). "rows/s" is
wall-clock; "rows/CPU-s" divides by the CPU time of the whole process (all threads), i.e. the
throughput of one fully used core -- on a shared or small machine the better basis for what N
cores can reach (N x that, if nothing else limits).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from terarec.data.preprocess import preprocess_criteo
from terarec.data.readers import READERS, ReaderConfig, create_reader
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


class _Timer:
    """Wall-clock and process CPU time of a block."""

    def __enter__(self) -> _Timer:
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t
        self.cpu = max(time.process_time() - self.c, 1e-9)


def bench(n: int, workers: int) -> list[tuple[str, str, int, float, float]]:
    sch = DataSchema([1], ["label"], 13, "dense", [SparseSpec("data1", 1, True, 26)])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("Raw", "RawAsync", "Parquet", "Norm"):
            src = _write(d, fmt, n, 1 if fmt.startswith("Raw") else 16)
            sizes = SIZES if fmt in ("RawAsync", "Parquet") else []
            cfg = ReaderConfig(fmt, src, slot_size_array=sizes, num_workers=workers)
            source = READERS.get(fmt)(cfg, sch)
            units = []
            for i, p in enumerate(source.paths):
                units += [(p, a, b) for a, b in source.pieces(i, 0, source.counts[i])]
            list(source.decode(*units[0]))  # warm-up: lazy imports, tables
            with ThreadPoolExecutor(workers) as pool, _Timer() as tm:
                total = sum(sum(len(c) for c in cs) for cs in
                            pool.map(lambda u, s=source: list(s.decode(*u)), units))
            rows.append((fmt, "decode", total, total / tm.wall, total / tm.cpu))
            r = create_reader(cfg, sch, 65536, repeat=False, drop_incomplete_batch=False)
            with _Timer() as tm:
                total = sum(b.batch_size for b in r)
            rows.append((fmt, "reader", total, total / tm.wall, total / tm.cpu))
        if CRITEO.exists():
            big = os.path.join(d, "criteo10x.txt")
            with open(CRITEO, "rb") as fh:
                data = fh.read()
            with open(big, "wb") as fh:
                for _ in range(10):
                    fh.write(data)
            with _Timer() as tm:
                res = preprocess_criteo(big, os.path.join(d, "pp"), num_workers=workers,
                                        block_bytes=4 << 20, progress=False)
            # worker processes: their CPU time is not in this process's; report wall only
            rows.append(("Criteo TSV -> Parquet", "preprocess (2 passes)", res.rows,
                         res.rows / tm.wall, float("nan")))
            cfg = ReaderConfig("CriteoTSV", big, slot_size_array=[1000] * 26,
                               num_workers=workers)
            with _Timer() as tm:
                total = sum(b.batch_size for b in create_reader(cfg, sch, 65536, repeat=False,
                                                                drop_incomplete_batch=False))
            rows.append(("CriteoTSV", "reader", total, total / tm.wall, total / tm.cpu))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    print(f"# data readers, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, workers={a.workers}, samples={a.samples}")
    print("| format | what | rows | rows/s | rows/CPU-s |")
    print("|---|---|---:|---:|---:|")
    for fmt, what, n, rate, per_cpu in bench(a.samples, a.workers):
        cpu = "-" if math.isnan(per_cpu) else f"{per_cpu:,.0f}"
        print(f"| {fmt} | {what} | {n:,} | {rate:,.0f} | {cpu} |")


if __name__ == "__main__":
    main()

"""Inference benchmarks: tier lookup keys/s, cache hit rate vs key skew, HTTP p50/p99.

Usage: python benchmarks/inference.py [--quick] [--out benchmarks/RESULTS_inference.md]
Bounded in count and time; every server binds 127.0.0.1. Redis runs only when redis-server is on
PATH; RocksDB only with rocksdict installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terarec.inference import embedding_specs_from_graph, write_sparse_model  # noqa: E402
from terarec.inference.tiers import EmbeddingCache, HostMemoryTier  # noqa: E402

DIM, ROWS, BATCH = 64, 200_000, 16_384


def rate(fn, keys: np.ndarray, seconds: float = 1.0) -> float:
    fn(keys)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(keys)
        n += keys.size
    return n / (time.perf_counter() - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiers_bench(tmp: Path) -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    keys = rng.permutation(ROWS * 4)[:ROWS].astype(np.int64)
    vecs = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    query = keys[rng.integers(0, ROWS, BATCH)]
    tiers = {"hash_map (1 partition)": HostMemoryTier("t", DIM),
             "parallel_hash_map (8 partitions)": HostMemoryTier("t", DIM, 8, parallel=True),
             "embedding cache (cpu, 100% rows)": EmbeddingCache("t", DIM, ROWS)}
    if torch.cuda.is_available():
        tiers["embedding cache (cuda, 100% rows)"] = EmbeddingCache("t", DIM, ROWS, "cuda")
    try:
        from terarec.inference.tiers.persistent import RocksDBTier

        tiers["rocks_db"] = RocksDBTier("hps_et.b.t", DIM, str(tmp / "rocks"))
    except ImportError:
        pass
    redis_proc = None
    out = []
    try:
        if shutil.which("redis-server"):
            from terarec.inference.tiers.redis_tier import RedisTier, connect

            port = free_port()
            redis_proc = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                 "--appendonly", "no"], stdout=subprocess.DEVNULL)
            time.sleep(0.5)
            tiers["redis (8 partitions, loopback)"] = RedisTier(
                "hps_et.b.t", DIM, connect(f"127.0.0.1:{port}"), 8)
        for name, tier in tiers.items():
            tier.insert(keys, vecs)
            out.append((name, rate(tier.lookup, query)))
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
    return out


def skew_bench() -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(1)
    src = HostMemoryTier("t", DIM)
    src.insert(np.arange(ROWS, dtype=np.int64), np.zeros((ROWS, DIM), np.float32))
    rows = []
    for alpha in (0.0, 0.6, 0.9, 1.1, 1.3):
        w = 1.0 / np.arange(1, ROWS + 1) ** alpha
        w /= w.sum()
        for pct in (0.05, 0.2):
            cache = EmbeddingCache("t", DIM, int(pct * ROWS), source=src, hit_rate_threshold=2.0)
            for _ in range(20):
                cache.query(rng.choice(ROWS, BATCH, p=w))
            cache.reset_stats()
            for _ in range(20):
                cache.query(rng.choice(ROWS, BATCH, p=w))
            rows.append((alpha, pct, cache.hit_rate()))
    return rows


def _write_model(folder: Path) -> None:
    graph = {"layers": [
        {"name": "data", "type": "Data", "dense": {"top": "dense", "dense_dim": 13},
         "label": {"top": "label", "label_dim": 1}, "sparse": [{"top": "d1", "slot_num": 26}]},
        {"name": "e", "type": "DistributedSlotSparseEmbeddingHash", "bottom": "d1", "top": "emb",
         "sparse_embedding_hparam": {"embedding_vec_size": 16, "combiner": "sum"}}]}
    rng = np.random.default_rng(2)
    write_sparse_model(folder / "s.model", np.arange(100_000, dtype=np.int64),
                       rng.standard_normal((100_000, 16)).astype(np.float32))
    (folder / "g.json").write_text(json.dumps(graph))
    (folder / "config.json").write_text(json.dumps({
        "graph": "g.json", "dense": "d", "sparse": ["s.model"], "max_batch_size": 4096}))


def http_bench(tmp: Path, quick: bool) -> list[tuple[int, float, float, float]]:
    import tritonclient.http as httpclient

    from terarec.serving.repository import make_loader
    from terarec.serving.server import ServerThread

    _write_model(tmp / "repo" / "bench" / "1")
    mlp = torch.nn.Sequential(torch.nn.Linear(26 * 16 + 13, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 1))

    def net(params):
        def dense_fn(emb, dense):
            return torch.sigmoid(mlp(torch.cat([emb["emb"].flatten(1), dense], 1)))
        return dense_fn, embedding_specs_from_graph(params.network_file)

    rng = np.random.default_rng(3)
    rows = []
    with ServerThread(tmp / "repo", loader=make_loader(net), max_batch_size=4096,
                      max_delay_s=0.001, max_request_bytes=256 << 20) as srv:
        for b in (1, 64, 1024):
            dense = rng.standard_normal(b * 13).astype(np.float32)
            keys = rng.integers(0, 100_000, b * 26).astype(np.int64)
            rowidx = np.arange(b * 26 + 1, dtype=np.int32)
            n_req = (64 if b == 1024 else 320) // (4 if quick else 1)
            lat: list[float] = []
            lock = threading.Lock()

            def client_loop(n: int, dense=dense, keys=keys, rowidx=rowidx, lat=lat,
                            lock=lock) -> None:
                c = httpclient.InferenceServerClient(srv.url, connection_timeout=60,
                                                     network_timeout=60)
                ins = [httpclient.InferInput("DES", [dense.size], "FP32"),
                       httpclient.InferInput("CATCOLUMN", [keys.size], "INT64"),
                       httpclient.InferInput("ROWINDEX", [rowidx.size], "INT32")]
                for i, a in zip(ins, (dense, keys, rowidx)):
                    i.set_data_from_numpy(a)
                for _ in range(n):
                    t0 = time.perf_counter()
                    c.infer("bench", ins)
                    with lock:
                        lat.append(time.perf_counter() - t0)

            threads = [threading.Thread(target=client_loop, args=(max(n_req // 16, 2),))
                       for _ in range(16)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            ms = np.array(lat) * 1000
            rows.append((b, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                         len(lat) * b / wall))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_inference.md")))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tiers = tiers_bench(tmp)
        skew = skew_bench()
        http = http_bench(tmp, args.quick)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = [
        "# Inference benchmarks", "",
        f"- date: 2026-11-28; machine: {platform.machine()}, {os.cpu_count()} CPU cores, {dev}; "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `python benchmarks/inference.py{' --quick' if args.quick else ''}`", "",
        f"## Tier lookup throughput ({ROWS} rows x dim {DIM}, batches of {BATCH} random keys)",
        "", "| tier | keys/s |", "|---|---:|",
        *[f"| {n} | {r:,.0f} |" for n, r in tiers], "",
        f"## Embedding cache hit rate vs key skew (power law alpha, {ROWS} rows, LRU, "
        f"20 warm-up + 20 measured batches of {BATCH})", "",
        "Hit rate is counted over the distinct keys of each batch (as HugeCTR's cache does), so "
        "repeated hot keys inside one batch count once.", "",
        "| alpha | cache size | hit rate |", "|---:|---:|---:|",
        *[f"| {a} | {p:.0%} | {h:.3f} |" for a, p, h in skew], "",
        "## HTTP (KServe v2, tritonclient.http binary tensors, 16 concurrent clients, "
        "127.0.0.1; 26 slots x dim 16 + 13 dense, 2-layer MLP on CPU, dynamic batching)", "",
        "| batch | p50 ms | p99 ms | samples/s |", "|---:|---:|---:|---:|",
        *[f"| {b} | {p50:.2f} | {p99:.2f} | {s:,.0f} |" for b, p50, p99, s in http], "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

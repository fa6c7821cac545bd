"""Check: the CUDA-graph step learns what the eager step learns, on a benchmark configuration.

Builds the same model twice (``train_throughput.terarec_model``, same seed), trains one eagerly
and one with ``use_cuda_graph``, on the same batches, and prints both loss curves.

    python benchmarks/graph_equivalence.py --config dcnv2 --batch 8192 --steps 12
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CONFIGS, KAGGLE, make_batches, terarec_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="dcnv2")
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--max-rows", type=int, default=200_000)
    a = p.parse_args()
    dev = torch.device("cuda")
    cfg = CONFIGS[a.config]
    card = [min(c, a.max_rows) for c in KAGGLE]
    batches = make_batches(card, cfg["hot"], a.batch, 4, dev)
    curves = {}
    for graph in (False, True):
        torch.manual_seed(0)
        model = terarec_model(a.config, card, cfg, a.batch, dev)
        model.engine.use_cuda_graph = graph
        losses = []
        for i in range(a.steps):
            model.train(batches[i % len(batches)][0])
            losses.append(model.get_current_loss())
        curves[graph] = losses
        whole = model.engine.step_graph.graph is not None
        print(f"{'graph' if graph else 'eager'} (whole-step graph: {whole}, dense graph: "
              f"{bool(model.engine._graph)}): " + " ".join(f"{x:.4f}" for x in losses))
        del model
        torch.cuda.empty_cache()
    diff = max(abs(x - y) for x, y in zip(curves[False], curves[True]))
    print(f"{a.config}: max |loss eager - loss graph| = {diff:.2e}")


if __name__ == "__main__":
    main()

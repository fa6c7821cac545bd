"""The HugeCTR facade on N ranks vs one process: same global batches, same results."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.helpers.models import build_dcn

STEPS = 6


def _train(model: Any, steps: int) -> list[float]:
    sched = model.get_learning_rate_scheduler()
    losses = []
    for _ in range(steps):
        model.set_learning_rate(sched.get_next())
        assert model.train()
        losses.append(model.get_current_loss())
    return losses


def build(data: dict[str, Any], kind: str) -> Any:
    emb = {"dist": None, "local": "LocalizedSlotSparseEmbeddingHash",
           "hybrid": "HybridSparseEmbedding", "onehot": "LocalizedSlotSparseEmbeddingOneHot"}[kind]
    model = build_dcn(data, batchsize=64, lr=0.01)
    if emb is not None:
        model.spec.embeddings[0].embedding_type = emb
    if kind == "onehot":  # keys are row numbers; slot-wise: the fixed-size exchange
        model.spec.embeddings[0].slot_size_array = list(data["slot_sizes"])
    model.compile()
    return model


def run(rank: int, world: int, data: dict[str, Any], kind: str, out_prefix: str | None,
        load_prefix: str | None) -> dict[str, Any]:
    """Train (or load then train), optionally save; returns losses, dense weights, table."""
    model = build(data, kind)
    res: dict[str, Any] = {"rank": model.rank, "world": getattr(model, "world_size", 1)}
    if load_prefix is not None:
        model.load_training_state(load_prefix, STEPS)
        for _ in range(STEPS):  # the data position of the saved run
            model.train_reader.next_batch()
    res["losses"] = _train(model, STEPS)
    res["auc"] = model.evaluate(num_batches=2)["AUC"]
    res["dense"] = model.dense_weights_numpy()
    table = model.engine.tables["emb"]
    res["placement"] = getattr(getattr(table, "placement", None), "kind", None)
    res["hot"] = int(table.hot_keys.numel()) if hasattr(table, "hot_keys") else 0
    exchange = getattr(table, "_exchange", None)
    res["fixed_steps"] = exchange._steps if exchange is not None else 0
    keys, vecs, _ = table.export()
    res["table"] = (np.asarray(keys), np.asarray(vecs))
    if out_prefix is not None:
        model.save_params_to_files(out_prefix, STEPS)
    return res


def run_many(rank: int, world: int, jobs: list[tuple]) -> list[dict[str, Any]]:
    return [run(rank, world, *job) for job in jobs]




"""GAUC / uAUC and NE / LogLoss: against plain-python references (per-group loops, pair counts,
no scikit-learn), across 2 gloo ranks, and on a tiny HugeCTR-API model's evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import terarec as hugectr
from terarec.data.batch import Batch
from terarec.errors import ConfigError
from terarec.metrics import (
    AUC,
    GroupAUC,
    MetricSet,
    NormalizedEntropy,
    create_metrics,
    exact_auc,
    group_auc,
    normalized_entropy,
)
from terarec.sparse import SparseInput
from tests.distributed.harness import run_ranks
from tests.helpers.models import build_dcn
from tests.helpers.synth import raw_async_dataset


# ---------------------------------------------------------------------------- references
def ref_pair_auc(scores: list[float], labels: list[float]) -> float | None:
    """Mann-Whitney by counting every (positive, negative) pair; ties count 1/2."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def ref_group_auc(groups, scores, labels) -> tuple[float, float, int, int]:
    """(GAUC, uAUC, valid groups, skipped groups) with a Python loop over groups."""
    by: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(int(g), []).append(i)
    num = den = total = 0.0
    valid = skipped = 0
    for idx in by.values():
        auc = ref_pair_auc([float(scores[i]) for i in idx], [float(labels[i]) for i in idx])
        if auc is None:
            skipped += 1
            continue
        num += len(idx) * auc
        den += len(idx)
        total += auc
        valid += 1
    if valid == 0:
        return math.nan, math.nan, 0, skipped
    return num / den, total / valid, valid, skipped


def ref_ne(preds, labels, eps: float = 1e-12) -> tuple[float, float]:
    n = len(preds)
    loss = 0.0
    for p, y in zip(preds, labels):
        p = min(max(float(p), eps), 1 - eps)
        loss -= y * math.log(p) + (1 - y) * math.log(1 - p)
    logloss = loss / n
    ctr = sum(labels) / n
    return logloss / -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr)), logloss


def random_data(n: int, n_groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups with many ties (scores on a 0.1 grid), including single-class groups."""
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, n_groups, (n,), generator=gen) * 7919 - 50_000  # negative ids too
    preds = torch.round(torch.rand(n, generator=gen) * 10) / 10
    labels = (torch.rand(n, generator=gen) < preds * 0.8 + 0.1).float()
    # Force single-class groups: every sample of the first two group ids gets label 0 / 1.
    labels[groups == groups[0]] = 0.0
    labels[groups == groups[1]] = 1.0
    return groups, preds, labels


# ---------------------------------------------------------------------------- single process
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_auc_matches_per_group_loop(seed: int) -> None:
    groups, preds, labels = random_data(600, 40, seed)
    got = group_auc(groups, preds, labels)
    gauc, uauc, valid, skipped = ref_group_auc(groups.tolist(), preds.tolist(), labels.tolist())
    assert got.gauc == pytest.approx(gauc, abs=1e-12)
    assert got.uauc == pytest.approx(uauc, abs=1e-12)
    assert (got.groups, got.skipped_groups) == (valid, skipped)
    assert skipped >= 2 and valid > 20
    assert got.gauc != pytest.approx(got.uauc)  # weighting matters on this data


def test_ties_count_half_like_exact_auc() -> None:
    preds = torch.tensor([0.5, 0.5, 0.5, 0.2, 0.7, 0.7, 0.1, 0.9])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    one_group = group_auc(torch.zeros(8, dtype=torch.int64), preds, labels)
    assert one_group.gauc == pytest.approx(float(exact_auc(preds, labels)[0]), abs=1e-15)
    assert one_group.gauc == pytest.approx(ref_pair_auc(preds.tolist(), labels.tolist()))
    # Equal scores across different groups must not tie with each other.
    groups = torch.tensor([0, 0, 1, 1])
    r = group_auc(groups, torch.tensor([0.5, 0.5, 0.5, 0.5]), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert (r.gauc, r.uauc, r.groups) == (0.5, 0.5, 2)


def test_weighted_versus_unweighted_by_hand() -> None:
    # Group 7: 2 samples, AUC 1. Group 3: 4 samples, AUC 0.25. Group 5: single class.
    groups = torch.tensor([7, 7, 3, 3, 3, 3, 5, 5])
    preds = torch.tensor([0.1, 0.9, 0.8, 0.3, 0.2, 0.1, 0.4, 0.6])
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    r = group_auc(groups, preds, labels)
    g3 = ref_pair_auc([0.8, 0.3, 0.2, 0.1], [0, 1, 0, 0])
    assert r.uauc == pytest.approx((1.0 + g3) / 2)
    assert r.gauc == pytest.approx((2 * 1.0 + 4 * g3) / 6)
    assert (r.groups, r.skipped_groups) == (2, 1)


def test_all_single_class_is_nan_and_empty_is_nan() -> None:
    r = group_auc(torch.tensor([1, 1, 2]), torch.tensor([0.1, 0.2, 0.3]), torch.ones(3))
    assert math.isnan(r.gauc) and math.isnan(r.uauc) and r.skipped_groups == 2
    m = GroupAUC()
    assert math.isnan(m.compute())


def test_metric_in_batches_and_multilabel() -> None:
    groups, preds, labels = random_data(500, 30, 5)
    preds2 = torch.stack([preds, preds.flip(0)], 1)
    labels2 = torch.stack([labels, labels], 1)
    m = GroupAUC()
    for i in range(0, 500, 64):
        m.update(preds2[i : i + 64], labels2[i : i + 64], groups=groups[i : i + 64])
    gauc = m.compute()
    col0 = ref_group_auc(groups.tolist(), preds.tolist(), labels.tolist())
    col1 = ref_group_auc(groups.tolist(), preds.flip(0).tolist(), labels.tolist())
    assert gauc == pytest.approx((col0[0] + col1[0]) / 2, abs=1e-12)
    assert m.result is not None and m.result.per_class[1][1] == pytest.approx(col1[1], abs=1e-12)
    m.reset()
    assert math.isnan(m.compute())


def _sparse_batch(user_ids: list[int | None]):
    """A batch whose sparse input "data1" has 2 slots: slot 1 holds the user id (or nothing)."""
    keys, offsets = [], [0]
    for uid in user_ids:
        keys.append(100)  # slot 0: an unrelated key
        offsets.append(len(keys))
        if uid is not None:
            keys.append(uid)
        offsets.append(len(keys))
    sparse = SparseInput(torch.tensor(keys, dtype=torch.int64),
                         torch.tensor(offsets, dtype=torch.int64), 2)
    n = len(user_ids)
    return Batch(torch.zeros(n, 1), torch.zeros(n, 1), {"data1": sparse})


def test_group_id_read_from_sparse_slot() -> None:
    batch = _sparse_batch([5, 5, 9, None, 9])
    preds = torch.tensor([0.2, 0.8, 0.6, 0.9, 0.1])
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    m = GroupAUC(group_input="data1", group_slot=1)
    m.update(preds, labels, batch=batch)
    r = m.compute_result()
    assert (r.gauc, r.groups, r.missing) == (pytest.approx(0.5), 2, 1)  # user 5: 1, user 9: 0
    with pytest.raises(ConfigError, match="data2"):
        GroupAUC(group_input="data2").update(preds, labels, batch=batch)
    with pytest.raises(ConfigError, match="slot index"):
        GroupAUC(group_input="data1", group_slot=2).update(preds, labels, batch=batch)
    with pytest.raises(ConfigError, match="groups="):
        GroupAUC().update(preds, labels)
    with pytest.raises(ConfigError, match="integer"):
        GroupAUC().update(preds, labels, groups=torch.zeros(5))


def test_normalized_entropy_formula() -> None:
    gen = torch.Generator().manual_seed(3)
    preds = torch.rand(400, generator=gen)
    preds[0], preds[1] = 0.0, 1.0  # clipped, finite
    labels = (torch.rand(400, generator=gen) < 0.3).float()
    ne, logloss = normalized_entropy(preds, labels)
    ref = ref_ne(preds.tolist(), labels.tolist())
    assert (ne, logloss) == (pytest.approx(ref[0], rel=1e-12), pytest.approx(ref[1], rel=1e-12))
    m = NormalizedEntropy()
    for i in range(0, 400, 48):
        m.update(preds[i : i + 48], labels[i : i + 48])
    assert m.results() == {"NE": pytest.approx(ref[0], rel=1e-12),
                           "LogLoss": pytest.approx(ref[1], rel=1e-12)}
    # Predicting the base CTR everywhere gives NE = 1 exactly.
    ctr = float(labels.mean())
    assert normalized_entropy(torch.full((400,), ctr), labels)[0] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(normalized_entropy(preds, torch.zeros(400))[0])


def test_metric_set_runs_hugectr_and_extension_metrics() -> None:
    groups, preds, labels = random_data(300, 20, 9)
    ms = MetricSet(create_metrics({"AUC": 1.0}), [GroupAUC(group_input="data1", group_slot=1)])
    ms.add("NE")
    ids = groups.tolist()
    for i in range(0, 300, 100):
        batch = _sparse_batch(ids[i : i + 100])
        ms.update(preds[i : i + 100], labels[i : i + 100], 0.5, batch=batch)
    res = dict(ms.results())
    assert list(res) == ["AUC", "GAUC", "uAUC", "GAUC.groups", "GAUC.skipped_groups", "NE",
                         "LogLoss"]
    ref = ref_group_auc(ids, preds.tolist(), labels.tolist())
    assert (res["GAUC"], res["uAUC"]) == (pytest.approx(ref[0]), pytest.approx(ref[1]))
    assert res["NE"] == pytest.approx(ref_ne(preds.tolist(), labels.tolist())[0])
    with pytest.raises(ConfigError, match="batch"):
        ms.update(preds[:10], labels[:10], 0.5)
    with pytest.raises(ConfigError, match="not evaluated yet"):
        ms.add(NormalizedEntropy())
    with pytest.raises(ConfigError, match="group_input"):
        MetricSet().add("GAUC")
    with pytest.raises(ConfigError, match="GAUC"):
        MetricSet().add("GUAC")
    assert list(ms.rebuilt({"AUC": AUC()})) == ["AUC", "GAUC", "NE"]


# ---------------------------------------------------------------------------- two ranks
def _rank_worker(rank: int, world: int) -> dict[str, float]:
    groups, preds, labels = random_data(2000, 150, 21)
    # Uneven split, groups straddling ranks; rank 1 also gets the 2nd label column.
    part = slice(0, 700) if rank == 0 else slice(700, None)
    g, p, y = groups[part], preds[part], labels[part]
    gm, ne = GroupAUC(), NormalizedEntropy()
    for i in range(0, g.shape[0], 128):
        gm.update(p[i : i + 128], y[i : i + 128], groups=g[i : i + 128])
        ne.update(p[i : i + 128], y[i : i + 128])
    idle = GroupAUC()  # a rank without samples still joins the exchange
    if rank == 1:
        idle.update(p, y, groups=g)
    out = {**gm.results(), **ne.results()}
    out["idle_gauc"] = idle.compute()
    return out


def test_two_gloo_ranks_equal_one_process() -> None:
    results = run_ranks(_rank_worker, 2, timeout=120)
    groups, preds, labels = random_data(2000, 150, 21)
    single = group_auc(groups, preds, labels)
    ne, logloss = normalized_entropy(preds, labels)
    idle = group_auc(groups[700:], preds[700:], labels[700:]).gauc
    for res in results:
        v = res["value"]
        assert v["GAUC"] == pytest.approx(single.gauc, abs=1e-12)
        assert v["uAUC"] == pytest.approx(single.uauc, abs=1e-12)
        assert (v["GAUC.groups"], v["GAUC.skipped_groups"]) == (single.groups,
                                                                 single.skipped_groups)
        assert (v["NE"], v["LogLoss"]) == (pytest.approx(ne, abs=1e-12),
                                           pytest.approx(logloss, abs=1e-12))
        assert v["idle_gauc"] == pytest.approx(idle, abs=1e-12)


# ---------------------------------------------------------------------------- HugeCTR facade
def test_tiny_model_evaluation_reports_gauc_uauc_ne(tmp_path: Path) -> None:
    """The evaluation loop of ``Model.evaluate`` with a MetricSet (what ``add_metric`` wires):
    AUC equals ``evaluate()``'s, GAUC/uAUC/NE equal the references on ``predict()``'s output."""
    d = raw_async_dataset(tmp_path, n_train=512, n_eval=256, slot_sizes=[12, 30, 20])
    model = build_dcn(d, batchsize=64)
    model.compile()
    model.fit(max_iter=8, display=100, eval_interval=100)
    ms = MetricSet(create_metrics({hugectr.MetricsType.AUC: 1.0}),
                   [GroupAUC(group_input="data1", group_slot=0), "NE"])
    group_ids: list[np.ndarray] = []
    for batch in model.eval_reader.iterate_once():
        out = model.engine.eval_step(batch)
        ms.update(out.predictions, out.labels, float(out.loss), batch=batch)
        group_ids.append(batch.sparse["data1"].keys.reshape(-1, 3)[:, 0].cpu().numpy())
    res = dict(ms.results())
    assert res["AUC"] == pytest.approx(model.evaluate()["AUC"], abs=1e-12)
    preds = model.predict().reshape(-1)
    labels = np.fromfile(d["eval"], dtype="<i4").reshape(256, -1)[:, 0].astype(np.float64)
    groups = np.concatenate(group_ids)
    ref = ref_group_auc(groups.tolist(), preds.tolist(), labels.tolist())
    assert ref[2] > 5
    assert res["GAUC"] == pytest.approx(ref[0], abs=1e-9)
    assert res["uAUC"] == pytest.approx(ref[1], abs=1e-9)
    assert (res["GAUC.groups"], res["GAUC.skipped_groups"]) == (ref[2], ref[3])
    assert res["NE"] == pytest.approx(ref_ne(preds.tolist(), labels.tolist())[0], rel=1e-9)


@pytest.mark.skipif(not hasattr(hugectr.Model, "add_metric"),
                    reason="Model.add_metric not wired yet (terarec/compat/model.py)")
def test_model_add_metric(tmp_path: Path) -> None:
    d = raw_async_dataset(tmp_path, n_train=256, n_eval=128, slot_sizes=[12, 30, 20])
    model = build_dcn(d, batchsize=64)
    model.add_metric(GroupAUC(group_input="data1", group_slot=0))
    model.compile()
    model.add_metric("NE")
    res = model.evaluate()
    assert {"AUC", "GAUC", "uAUC", "NE", "LogLoss"} <= set(res)
    assert 0.0 <= res["GAUC"] <= 1.0 and res["NE"] > 0

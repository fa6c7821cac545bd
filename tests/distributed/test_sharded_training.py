"""N-rank training (gloo, CPU) equals one-process training on the same global batches.

One process group per world size (2, then 3) runs every scenario; the parent computes the
one-process references and compares losses, final tables, optimizer states and dense weights
(fp32, tolerance 1e-5). Covers row_wise / table_wise (whole and slot-wise) / replicated / a
mixed plan, one-hot and multi-hot, sum and mean, SGD and Adam, an uneven last batch, the
HugeCTR facade, and checkpoints written by 2 ranks loaded by 1 process and by 3 ranks.
The process groups (fixtures ``two`` / ``three``) live in ``conftest.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from terarec.distributed import state_format
from terarec.embedding.table import EmbeddingTable
from tests.distributed import model_scenarios as ms
from tests.distributed import scenarios as sc
from tests.distributed.harness import run_ranks

TOL = 1e-5


@pytest.fixture(scope="module")
def refs():
    out = {o: sc.reference(o) for o in ("SGD", "Adam")}
    out.update({f"{o}/onehot": sc.reference(o, onehot=True) for o in ("SGD", "Adam")})
    return out


def by_key(keys, values) -> dict[int, np.ndarray]:
    return dict(zip(np.asarray(keys).tolist(), np.asarray(values)))


def assert_same_table(got: tuple, ref: tuple, what: str, tol: float = TOL) -> None:
    g, r = by_key(*got), by_key(*ref)
    assert set(g) == set(r), f"{what}: keys differ ({len(g)} vs {len(r)})"
    worst = max((float(np.abs(g[k] - r[k]).max()) for k in r), default=0.0)
    assert worst <= tol, f"{what}: max diff {worst}"


def assert_same_model(got: dict, ref: dict, where: str, tol: float = TOL,
                      auc_tol: float = 1e-6) -> None:
    """Losses, AUC, dense weights and the table of a HugeCTR-facade run == the reference's."""
    np.testing.assert_allclose(got["losses"], ref["losses"], atol=tol, err_msg=where)
    assert abs(got["auc"] - ref["auc"]) < auc_tol, where
    for a, b in zip(got["dense"], ref["dense"]):
        np.testing.assert_allclose(a, b, atol=tol, err_msg=where)
    assert_same_table(got["table"], ref["table"], where, tol)


def assert_same_run(got: dict, ref: dict, where: str, tol: float = TOL) -> None:
    """Losses, dense weights and tables a, b, c of a sharded run == the one-process run."""
    np.testing.assert_allclose(got["losses"], ref["losses"], atol=tol, err_msg=where)
    for a, b in zip(got["dense"], ref["dense"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=tol, err_msg=where)
    for name in "abc":
        assert_same_table(got["tables"][name], ref["tables"][name], f"{where} {name}", tol)


def check_collection(results: list[dict], refs: dict, world: int, tol: float = TOL) -> None:
    cases = [(f"{k}/{o}", o) for k, o in sc.CASES]
    cases += [(f"{k}/{o}/per_table", o) for k, o in sc.PER_TABLE]
    cases += [(f"{k}/{o}/onehot", f"{o}/onehot") for k, o in sc.ONEHOT]
    fixed = [(f"{k}/{o}/fixed{'' if f else '/per_table'}", f"{o}/onehot") for k, o, f in sc.FIXED]
    for case, _ in fixed:  # the one-hot table took the fixed-size exchange on every step
        for res in results:
            assert res["value"]["collection"][case]["fixed_steps"].get("a") == \
                len(sc.BATCHES), case
    for case, ref_name in cases + fixed:
        ref = refs[ref_name]
        opt = ref_name.split("/")[0]
        for r, res in enumerate(results):
            got = res["value"]["collection"][case]
            where = f"{world} ranks, rank {r}, {case}"
            assert_same_run(got, ref, where, tol)
            for name in "abc":
                for state in state_format.state_names(sc.configs(opt)[0]):
                    assert_same_table(got["opt"][name][state], ref["opt"][name][state],
                                      f"{where} {name} {state}", tol)
                assert int(got["opt"][name]["__step__"][1][0]) == len(sc.BATCHES)


def test_two_ranks_equal_one_process(two, refs):
    check_collection(two, refs, 2)


def test_three_ranks_equal_one_process(three, refs):
    check_collection(three, refs, 3)


def test_model_two_ranks_equal_one_process(two, data, tmp):
    for kind in ("dist", "local", "onehot"):
        ref = ms.run(0, 1, data, kind, str(tmp / f"one_{kind}"), None)
        for r, res in enumerate(two):
            got = res["value"]["model"][kind]
            # one-hot slot-wise table: every train and eval step took the fixed-size exchange
            assert got["fixed_steps"] == (ms.STEPS + 2 if kind == "onehot" else 0), kind
            assert (got["rank"], got["world"]) == (r, 2)
            assert_same_model(got, ref, f"model {kind} rank {r}")


def test_model_three_ranks_uneven_split(three, data):
    ref = ms.run(0, 1, data, "local", None, None)  # 64 samples over 3 ranks: 21 / 21 / 22
    for res in three:
        got = res["value"]["model"]
        np.testing.assert_allclose(got["losses"], ref["losses"], atol=TOL)
        for a, b in zip(got["dense"], ref["dense"]):
            np.testing.assert_allclose(a, b, atol=TOL)
    ref = ms.run(0, 1, data, "onehot", None, None)  # uneven split through the fixed exchange
    for res in three:
        got = res["value"]["model_onehot"]
        assert got["fixed_steps"] == ms.STEPS + 2
        assert_same_model(got, ref, "model onehot, 3 ranks")


def test_hugectr_files_match_one_process(two, tmp):
    from terarec.checkpoint import hugectr_files as hf

    for kind in ("dist", "local"):
        one, two_ = str(tmp / f"one_{kind}"), str(tmp / f"two_{kind}")
        for path in (hf.dense_path, hf.dense_opt_path):
            np.testing.assert_allclose(np.fromfile(path(two_, ms.STEPS), "<f4"),
                                       np.fromfile(path(one, ms.STEPS), "<f4"), atol=TOL)
        k2, v2, s2 = hf.read_sparse_folder(hf.sparse_path(two_, 0, ms.STEPS), 8)
        k1, v1, s1 = hf.read_sparse_folder(hf.sparse_path(one, 0, ms.STEPS), 8)
        assert_same_table((k2, v2), (k1, v1), f"{kind} sparse files")
        assert (s1 is None) == (s2 is None) == (kind == "dist")
        if s1 is not None:
            assert by_key(k2, s2) == by_key(k1, s1)
        assert (tmp / f"two_{kind}_shards_{ms.STEPS}" / "rank1").is_dir()


def test_checkpoint_of_two_ranks_resumes_in_one_process_and_on_three(two, three, data, tmp):
    one = ms.run(0, 1, data, "dist", None, str(tmp / "two_dist"))
    ref = ms.run(0, 1, data, "dist", None, str(tmp / "one_dist"))
    np.testing.assert_allclose(one["losses"], ref["losses"], atol=TOL)
    for res in three:
        got = res["value"]["model_resumed"]
        np.testing.assert_allclose(got["losses"], ref["losses"], atol=TOL)
        for a, b in zip(got["dense"], ref["dense"]):
            np.testing.assert_allclose(a, b, atol=TOL)
        assert_same_table(got["table"], ref["table"], "resumed on 3 ranks")


def test_sharded_checkpoint_loads_on_three_ranks_and_one_process(two, three, tmp):
    from terarec.distributed.checkpoint import load_shards

    written = two[0]["value"]["shards"]
    cfgs = sc.configs("Adam")
    for res in three:
        for name, ((keys, vecs), opt) in res["value"]["shards"].items():
            assert_same_table((keys, vecs), written[name][0], f"3-rank load {name}")
            cfg = next(c for c in cfgs if c.name == name)
            got = state_format.from_bytes(cfg, opt, keys, "test")
            want = state_format.from_bytes(cfg, written[name][1], written[name][0][0], "test")
            for s in ("m", "v") if "m" in got else state_format.state_names(cfg):
                assert_same_table(got[s], want[s], f"3-rank load {name} {s}")
            assert int(got["__step__"][1][0]) == int(want["__step__"][1][0])
    import torch

    plain = {c.name: EmbeddingTable(c, generator=torch.Generator().manual_seed(9)) for c in cfgs}
    load_shards(plain, tmp / "shards2")
    for name, table in plain.items():
        assert_same_table(table.export()[:2], written[name][0], f"1-process load {name}")


@pytest.mark.multigpu
def test_nccl_two_gpus_equal_one_process(refs):
    """The same scenarios on 2 CUDA GPUs over NCCL (GPU float sums: tolerance 1e-4)."""
    res = run_ranks(sc.sharded_many, 2, sc.CASES, True, backend="nccl", timeout=300)
    check_collection([{"value": {"collection": r["value"]}} for r in res], refs, 2, 1e-4)

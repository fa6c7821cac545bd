"""The data-parallel whole-step graph is kept only if every rank captured it
(``step_graph._all_ranks_agree``): one rank's failed capture makes every rank drop its graph
(a rank running eager collectives against the others' replays would hang them). Two gloo
ranks, each combination of outcomes; without a process group the local outcome stands."""

from __future__ import annotations

import torch

from terarec.training.step_graph import _all_ranks_agree
from tests.distributed.harness import run_ranks

COMBOS = [(True, True), (True, False), (False, True), (False, False)]


def _agree(rank: int, world: int) -> list[bool]:
    return [_all_ranks_agree(oks[rank], torch.device("cpu")) for oks in COMBOS]


def test_ranks_keep_the_graph_only_together() -> None:
    for res in run_ranks(_agree, 2, timeout=60):
        assert res["value"] == [all(oks) for oks in COMBOS]


def test_without_a_group_the_local_outcome_stands() -> None:
    assert _all_ranks_agree(True, torch.device("cpu")) is True
    assert _all_ranks_agree(False, torch.device("cpu")) is False

"""Group AUC ("GAUC") and user-averaged AUC ("uAUC"): terarec extensions, not HugeCTR metrics.

Definitions, for the groups ``g`` (e.g. users) that have at least one positive *and* one
negative sample ("valid" groups)::

    GAUC = sum_g w_g * AUC_g / sum_g w_g        w_g = number of impressions (samples) of g
    uAUC = sum_g AUC_g / G_valid                (unweighted mean over the valid groups)

(GAUC as in Zhou et al., "Deep Interest Network", KDD 2018.) ``AUC_g`` is the exact ROC-AUC of
the group's samples with tied scores counted as one half, i.e. exactly
:func:`terarec.metrics.exact_auc` applied to the group alone (Mann-Whitney statistic; labels in
[0, 1] act as positive / negative weights ``y`` and ``1 - y`` like there). Groups with a single
class are skipped and counted (:attr:`GroupAUCResult.skipped_groups`); with no valid group both
values are NaN. Multi-label input ``(B, T)`` gives one value per column and reports their mean.

Computation: one lexicographic sort by (group, score) (two stable sorts), then segmented
cumulative sums and ``index_add_`` per group: no Python loop over groups, static shapes, no host
synchronisation until the final reduction.

Where the group id comes from: :class:`GroupAUC` reads it from a sparse input slot of each
evaluation batch (``GroupAUC(group_input="data1", group_slot=0)``: the first key of that slot;
samples whose slot is empty are left out and counted in :attr:`GroupAUCResult.missing`), or
takes it explicitly (``update(preds, labels, groups=user_ids)``, e.g. after ``model.predict``).

Across ranks: every rank keeps its own (group id, score, label) triples on its device. In
:meth:`GroupAUC.compute` the triples are sent with one ``all_to_all_single`` to their group's
owner rank (a fold of the group id, mod world size), so each rank holds whole groups; every rank
computes its groups' sums and one all-reduce of 5 numbers per label column combines them.
Memory per rank: O(eval samples / world) for evenly spread groups (its own triples plus those
of the groups it owns, 8 + 8T + 1 bytes each), never the whole evaluation set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from terarec.errors import ConfigError
from terarec.metrics.base import BaseMetric, LossLike

__all__ = ["GroupAUC", "GroupAUCResult", "group_auc", "group_auc_sums", "group_ids_from_batch"]

#: Columns of :func:`group_auc_sums`.
SUM_FIELDS = ("weighted_auc", "weight", "auc", "groups", "skipped")


def lexsort_group_score(groups: Tensor, scores: Tensor) -> Tensor:
    """Permutation sorting the samples by group id, then by score (two stable sorts)."""
    by_score = torch.sort(scores, stable=True).indices
    by_group = torch.sort(groups[by_score], stable=True).indices
    return by_score[by_group]


def _column_sums(groups: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
    """The 5 sums of :func:`group_auc_sums` for one label column (float64, on the device)."""
    n = groups.numel()
    dev = scores.device
    if n == 0:
        return torch.zeros(len(SUM_FIELDS), dtype=torch.float64, device=dev)
    perm = lexsort_group_score(groups, scores)
    g, s = groups[perm], scores[perm]
    pos = labels[perm].to(torch.float64)
    neg = 1.0 - pos
    idx = torch.arange(n, device=dev)
    new_group = torch.ones(n, dtype=torch.bool, device=dev)
    new_group[1:] = g[1:] != g[:-1]
    new_tie = new_group.clone()
    new_tie[1:] |= s[1:] != s[:-1]
    end_tie = torch.ones_like(new_tie)
    end_tie[:-1] = new_tie[1:]
    gidx = torch.cumsum(new_group, 0) - 1  # dense group index (< n: no host sync for the count)
    group_start = torch.where(new_group, idx, 0).cummax(0).values
    tie_first = torch.where(new_tie, idx, 0).cummax(0).values
    tie_last = torch.where(end_tie, idx, n).flip(0).cummin(0).values.flip(0)
    neg_cum = torch.nn.functional.pad(torch.cumsum(neg, 0), (1, 0))
    base = neg_cum[group_start]
    below = neg_cum[tie_first] - base  # negatives of the group with a lower score
    upto = neg_cum[tie_last + 1] - base  # ... with a lower or equal score
    zeros = torch.zeros(n, dtype=torch.float64, device=dev)
    area = zeros.index_add(0, gidx, 0.5 * pos * (below + upto))
    n_pos = zeros.index_add(0, gidx, pos)
    n_neg = zeros.index_add(0, gidx, neg)
    count = zeros.index_add(0, gidx, torch.ones_like(pos))
    exists = count > 0
    valid = (n_pos > 0) & (n_neg > 0)
    auc = torch.where(valid, area / torch.where(valid, n_pos * n_neg, 1.0), 0.0)
    weight = torch.where(valid, count, 0.0)
    return torch.stack([
        (weight * auc).sum(), weight.sum(), auc.sum(),
        valid.sum().to(torch.float64), (exists & ~valid).sum().to(torch.float64),
    ])


def group_auc_sums(groups: Tensor, preds: Tensor, labels: Tensor) -> Tensor:
    """Per-column sums from which GAUC and uAUC follow (additive over disjoint group sets).

    Args:
        groups: integer group id per sample, shape ``(n,)``.
        preds: scores ``(n,)`` or ``(n, T)``.
        labels: labels in [0, 1] with as many elements as ``preds``.

    Returns:
        float64 ``(T, 5)``: ``sum w_g AUC_g``, ``sum w_g``, ``sum AUC_g``, number of valid
        groups, number of single-class groups (columns in :data:`SUM_FIELDS`).
    """
    n = groups.shape[0] if groups.dim() == 1 else -1
    if groups.dim() != 1 or preds.shape[0] != n or labels.numel() != preds.numel():
        raise ConfigError(
            "group_auc(groups, preds, labels)",
            "groups (n,), preds (n,) or (n, T) and labels with as many elements as preds",
            (tuple(groups.shape), tuple(preds.shape), tuple(labels.shape)),
        )
    if groups.is_floating_point() or groups.is_complex():
        raise ConfigError("group_auc(groups=...)", "integer group ids", groups.dtype)
    p = preds.unsqueeze(1) if preds.dim() == 1 else preds
    if not p.is_floating_point() or p.dtype in (torch.float16, torch.bfloat16):
        p = p.float()
    y = labels.reshape(p.shape).to(p.device)
    g = groups.to(device=p.device, dtype=torch.int64)
    return torch.stack([_column_sums(g, p[:, t], y[:, t]) for t in range(p.shape[1])])


@dataclass(frozen=True)
class GroupAUCResult:
    """GAUC / uAUC (means over label columns) and the group counts (of the first column).

    Attributes:
        gauc, uauc: see the module docstring (NaN when no group has both classes).
        groups: number of groups with both classes (the ones averaged).
        skipped_groups: number of single-class groups left out.
        missing: samples left out because their group slot had no key.
        per_class: ``[(gauc, uauc), ...]`` per label column.
    """

    gauc: float
    uauc: float
    groups: int
    skipped_groups: int
    missing: int = 0
    per_class: tuple[tuple[float, float], ...] = ()

    @classmethod
    def from_sums(cls, sums: Tensor, missing: int = 0) -> GroupAUCResult:
        """Finish :func:`group_auc_sums` (summed over ranks) into the two averages."""
        rows = sums.detach().cpu().tolist()
        per = tuple(
            (wa / w if w > 0 else math.nan, a / k if k > 0 else math.nan)
            for wa, w, a, k, _ in rows
        )
        if not per:
            return cls(math.nan, math.nan, 0, 0, missing)
        return cls(
            gauc=sum(p[0] for p in per) / len(per),
            uauc=sum(p[1] for p in per) / len(per),
            groups=int(rows[0][3]),
            skipped_groups=int(rows[0][4]),
            missing=missing,
            per_class=per,
        )


def group_auc(groups: Tensor, preds: Tensor, labels: Tensor) -> GroupAUCResult:
    """GAUC and uAUC of one process's data (see the module docstring).

    Example:
        >>> r = group_auc(torch.tensor([0, 0, 1, 1]), torch.tensor([.1, .9, .3, .2]),
        ...               torch.tensor([0., 1., 1., 0.]))
        >>> r.gauc, r.uauc, r.groups
        (1.0, 1.0, 2)
    """
    return GroupAUCResult.from_sums(group_auc_sums(groups, preds, labels))


def group_ids_from_batch(batch: Any, group_input: str, group_slot: int = 0) -> tuple[Tensor, Tensor]:
    """The group id of every sample of ``batch``: the first key of slot ``group_slot`` of the
    sparse input ``group_input``.

    Returns:
        ``(ids, present)``: int64 ``(B,)`` ids (0 where the slot is empty) and a bool mask of
        the samples whose slot has a key. Device work only, no host synchronisation.
    """
    sparse = getattr(batch, "sparse", None)
    if not isinstance(sparse, dict) or group_input not in sparse:
        names = sorted(sparse) if isinstance(sparse, dict) else None
        raise ConfigError("GroupAUC(group_input=...)", f"one of the sparse inputs {names}",
                          group_input)
    inp = sparse[group_input]
    if not 0 <= group_slot < inp.slot_num:
        raise ConfigError("GroupAUC(group_slot=...)",
                          f"a slot index in [0, {inp.slot_num}) of input {group_input!r}",
                          group_slot)
    rows = torch.arange(inp.batch_size, device=inp.offsets.device) * inp.slot_num + group_slot
    start, end = inp.offsets[rows], inp.offsets[rows + 1]
    present = end > start
    if inp.keys.numel() == 0:
        return torch.zeros_like(start, dtype=torch.int64), present
    ids = inp.keys[start.clamp(max=inp.keys.numel() - 1)].to(torch.int64)
    return torch.where(present, ids, 0), present


def owner_rank(groups: Tensor, world: int) -> Tensor:
    """The rank that computes each group: the id with its high bits folded in, mod ``world``."""
    folded = groups ^ (groups >> 21) ^ (groups >> 42)
    return torch.remainder(folded, world)


class GroupAUC(BaseMetric):
    """GAUC and uAUC over every sample accumulated since :meth:`reset` (terarec extension).

    :meth:`compute` returns GAUC; :meth:`results` returns ``{"GAUC", "uAUC", "GAUC.groups",
    "GAUC.skipped_groups"}``; :attr:`result` keeps the last :class:`GroupAUCResult`.

    Args:
        group_input: name of the sparse input holding the group id (e.g. the user-id input);
            needed when the batch is passed to :meth:`update` (``batch=``).
        group_slot: slot of that input (its first key is the group id).
        distributed, process_group: see :class:`~terarec.metrics.base.BaseMetric`.
    """

    name = "GAUC"
    needs_batch = True

    def __init__(
        self,
        group_input: str | None = None,
        group_slot: int = 0,
        *,
        distributed: bool = True,
        process_group: object | None = None,
    ) -> None:
        super().__init__(distributed=distributed, process_group=process_group)
        if group_input is not None and not isinstance(group_input, str):
            raise ConfigError("GroupAUC(group_input=...)", "a sparse input name (str)", group_input)
        if isinstance(group_slot, bool) or not isinstance(group_slot, int) or group_slot < 0:
            raise ConfigError("GroupAUC(group_slot=...)", "a slot index >= 0", group_slot)
        self.group_input = group_input
        self.group_slot = group_slot
        self.result: GroupAUCResult | None = None
        self._parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def __repr__(self) -> str:
        return f"GroupAUC(group_input={self.group_input!r}, group_slot={self.group_slot})"

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None, *,
               groups: Tensor | None = None, batch: Any = None) -> None:
        """Keep one batch: group ids from ``groups`` or from ``batch``'s group slot."""
        p, y = self._check(preds, labels)
        if groups is not None:
            if not isinstance(groups, Tensor) or groups.dim() != 1:
                raise ConfigError("GroupAUC.update(groups=...)", "a 1-D integer tensor",
                                  type(groups) if not isinstance(groups, Tensor) else groups.shape)
            ids, present = groups, torch.ones(groups.shape, dtype=torch.bool, device=groups.device)
        elif batch is not None:
            if self.group_input is None:
                raise ConfigError("GroupAUC(group_input=...)",
                                  "the sparse input holding the group id, to read it from batch",
                                  None)
            ids, present = group_ids_from_batch(batch, self.group_input, self.group_slot)
        else:
            raise ConfigError("GroupAUC.update", "groups=<ids> or batch=<the evaluation batch>",
                              None)
        if ids.is_floating_point() or ids.shape[0] != p.shape[0]:
            raise ConfigError("GroupAUC.update(groups)",
                              f"{p.shape[0]} integer group ids (one per prediction)",
                              (tuple(ids.shape), ids.dtype))
        if self._parts and p.shape[1] != self._parts[0][2].shape[1]:
            raise ConfigError("GroupAUC.update(preds)",
                              f"{self._parts[0][2].shape[1]} label column(s) as earlier", p.shape)
        dev = p.device
        self._parts.append((ids.detach().to(dev, torch.int64), present.to(dev), p, y))

    def _exchange(self, groups: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Send every (group, row) to its owner rank (one all_to_all_single per tensor)."""
        world = self._dist_world()
        dest = owner_rank(groups, world)
        order = torch.sort(dest, stable=True).indices
        dev = self._comm_device(rows)
        send = torch.bincount(dest, minlength=world).to(dev)
        recv = torch.empty_like(send)
        pg = self.process_group
        dist.all_to_all_single(recv, send, group=pg)  # type: ignore[arg-type]
        s_sizes, r_sizes = send.tolist(), recv.tolist()
        out = []
        for t in (groups[order], rows[order]):
            x = t.to(dev).contiguous()
            y = torch.empty((sum(r_sizes), *x.shape[1:]), dtype=x.dtype, device=dev)
            dist.all_to_all_single(y, x, r_sizes, s_sizes, group=pg)  # type: ignore[arg-type]
            out.append(y.to(rows.device))
        return out[0], out[1]

    def compute(self) -> float:
        return self.compute_result().gauc

    def compute_result(self) -> GroupAUCResult:
        """GAUC, uAUC and the group counts over all ranks (also kept in :attr:`result`)."""
        if self._parts:
            ids = torch.cat([q[0] for q in self._parts])
            present = torch.cat([q[1] for q in self._parts])
            rows = torch.cat([torch.cat([q[2], q[3]], 1) for q in self._parts])
        else:  # this rank saw nothing: width 1 (ranks agree on T through the all-to-all)
            ids = torch.zeros(0, dtype=torch.int64)
            present = torch.zeros(0, dtype=torch.bool)
            rows = torch.zeros((0, 2))
        missing = (~present).sum().to(torch.float64)
        ids, rows = ids[present], rows[present]
        world = self._dist_world()
        if world > 1:
            width = self._all_reduce_max_width(rows)
            if rows.shape[1] != width:
                if rows.shape[0]:
                    raise ConfigError("GAUC.compute", "the same number of labels on every rank",
                                      rows.shape[1] // 2)
                rows = torch.zeros((0, width), dtype=rows.dtype, device=rows.device)
            ids, rows = self._exchange(ids, rows)
        t = rows.shape[1] // 2
        sums = group_auc_sums(ids, rows[:, :t], rows[:, t:])
        state = torch.cat([sums.reshape(-1), missing.to(sums.device).reshape(1)])
        state = self._all_reduce_sum(state)
        self.result = GroupAUCResult.from_sums(state[:-1].reshape(t, -1), int(state[-1]))
        return self.result

    def _all_reduce_max_width(self, rows: Tensor) -> int:
        width = torch.tensor([rows.shape[1] if rows.shape[0] else 0], dtype=torch.int64,
                             device=self._comm_device(rows))
        dist.all_reduce(width, op=dist.ReduceOp.MAX, group=self.process_group)  # type: ignore[arg-type]
        return int(width) or rows.shape[1]

    def results(self) -> dict[str, float]:
        """GAUC, uAUC and the group counts (one :meth:`compute`)."""
        r = self.compute_result()
        return {"GAUC": r.gauc, "uAUC": r.uauc, "GAUC.groups": float(r.groups),
                "GAUC.skipped_groups": float(r.skipped_groups)}

    def reset(self) -> None:
        self._parts.clear()

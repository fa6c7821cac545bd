"""Placement plans: where each embedding table lives (never what it is).

Owns :class:`TablePlacement` (sharding kind, ranks, storage tier) and :class:`ShardingPlan`
(table name -> placement), their JSON form and the human-readable ``describe()`` printed before
anything is allocated. Today only the single-device plan is executed
(:func:`single_device_plan`); the other kinds are accepted by the types so a multi-GPU planner
can add them without changing table configs or modules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from terarec.embedding.config import TableConfig
from terarec.errors import ConfigError

KINDS = ("replicated", "table_wise", "row_wise", "column_wise", "hybrid")
TIERS = ("device", "host", "ssd")


@dataclass
class TablePlacement:
    """Where one table lives.

    Args:
        kind: ``replicated`` (data parallel, full copy on every rank), ``table_wise`` (whole
            table on ``ranks[0]``), ``row_wise`` (rows split over ``ranks``), ``column_wise``
            (vector columns split over ``ranks``), ``hybrid`` (frequent rows replicated on
            every rank, the rest row-wise over ``ranks``).
        ranks: ranks holding (part of) the table.
        tier: storage of the rows: ``device`` memory, ``host`` memory or ``ssd``.
    """

    kind: str = "table_wise"
    ranks: list[int] = field(default_factory=lambda: [0])
    tier: str = "device"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError("TablePlacement.kind", f"one of {list(KINDS)}", self.kind)
        if self.tier not in TIERS:
            raise ConfigError("TablePlacement.tier", f"one of {list(TIERS)}", self.tier)
        self.ranks = [int(r) for r in self.ranks]
        if not self.ranks or any(r < 0 for r in self.ranks) or len(set(self.ranks)) != len(
                self.ranks):
            raise ConfigError("TablePlacement.ranks", "distinct non-negative ranks", self.ranks)

    def bytes_per_rank(self, table_bytes: int,
                       slot_weights: list[int] | None = None) -> dict[int, int]:
        """How the table's bytes spread over its ranks; ``slot_weights`` (rows per slot, or
        one per slot) split a slot-wise ``table_wise`` placement (slot ``s`` on
        ``ranks[s mod n]``)."""
        if self.kind in ("replicated",):
            return {r: table_bytes for r in self.ranks}
        if self.kind == "table_wise":
            n = len(self.ranks)
            if n == 1 or not slot_weights:
                return {self.ranks[0]: table_bytes}
            total = sum(slot_weights) or 1
            share = dict.fromkeys(self.ranks, 0)
            for s, w in enumerate(slot_weights):
                share[self.ranks[s % n]] += w
            return {r: -(-table_bytes * w // total) for r, w in share.items()}
        n = len(self.ranks)
        return {r: -(-table_bytes // n) for r in self.ranks}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ranks": list(self.ranks), "tier": self.tier}


def table_bytes(cfg: TableConfig) -> int:
    """Bytes of a table at full capacity: float32 weights plus optimizer states."""
    return cfg.max_vocabulary_size * cfg.dim * 4 * (1 + cfg.optimizer.states_per_weight)


def placed_bytes(cfg: TableConfig, placement: TablePlacement) -> dict[int, int]:
    """Bytes of ``cfg`` on each rank of ``placement`` (slot-wise tables split by slot)."""
    weights = list(cfg.slot_size_array) if cfg.slot_size_array else [1] * cfg.slot_num
    return placement.bytes_per_rank(table_bytes(cfg), weights)


@dataclass
class ShardingPlan:
    """Table name -> :class:`TablePlacement`."""

    placements: dict[str, TablePlacement] = field(default_factory=dict)

    def __getitem__(self, name: str) -> TablePlacement:
        if name not in self.placements:
            raise ConfigError("ShardingPlan", f"a placement for table {name!r}",
                              sorted(self.placements),
                              hint="Every table of the collection needs a placement")
        return self.placements[name]

    def to_json(self) -> str:
        return json.dumps({n: p.to_dict() for n, p in self.placements.items()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ShardingPlan:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError("sharding plan JSON", "an object {table: placement}", type(data))
        return cls({n: TablePlacement(**p) for n, p in data.items()})

    def describe(self, tables: list[TableConfig]) -> str:
        """A table of placements and bytes per rank and tier (print it before allocating)."""
        lines = [f"{'table':<24} {'kind':<12} {'tier':<7} {'ranks':<12} {'bytes/rank':>14}"]
        totals: dict[tuple[str, int], int] = {}
        for cfg in tables:
            p = self[cfg.name]
            per_rank = placed_bytes(cfg, p)
            for r, b in per_rank.items():
                totals[(p.tier, r)] = totals.get((p.tier, r), 0) + b
            lines.append(f"{cfg.name:<24} {p.kind:<12} {p.tier:<7} {str(p.ranks):<12} "
                         f"{max(per_rank.values()):>14,}")
        for (tier, r), b in sorted(totals.items()):
            lines.append(f"total {tier} rank {r}: {b:,} bytes ({b / 2**20:.1f} MiB)")
        return "\n".join(lines)


def single_device_plan(tables: list[TableConfig]) -> ShardingPlan:
    """Every table whole on rank 0's device (the plan executed today)."""
    return ShardingPlan({t.name: TablePlacement("table_wise", [0], "device") for t in tables})

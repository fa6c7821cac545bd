"""The sharding planner: propose where each table lives, check that it fits, print it.

Inputs are the table configs (rows, dim, optimizer -> bytes per row with the optimizer's
states), the world size, the memory of one device and (for balance) how many lookups each table
gets per sample. The proposal, in order:

1. **replicated** for small tables where data parallelism is cheaper than routing: a replica
   exchanges at most ``rows`` gradient rows per step, routing moves about
   ``2 * batch_per_rank * lookups`` vectors, and the replica must stay under
   ``replicate_fraction`` of a device.
2. **table_wise** for tables that fit on one device, placed greedily (largest first) on the
   rank with the fewest lookups (then bytes) when that rank's lookups stay within
   ``BALANCE_SLACK`` x the fair share (total lookups / ranks, or the table's own lookups).
3. **column_wise** for a table too big for one device whose vectors are wide
   (``dim >= column_min_dim``): its columns split over the fewest least-filled ranks whose
   share then fits (each block at least ``column_min_block`` columns), so a lookup touches
   ``k`` ranks and every block owner holds every key.
4. **row_wise** over every rank for the rest (too big for one device, or too hot).

**hybrid** (frequent rows replicated, the rest row-wise; see :mod:`~terarec.distributed.hybrid`)
is proposed for the tables the user asks for (``PlannerConfig.hybrid``) and for HugeCTR
``HybridSparseEmbedding`` tables; its bytes count ``hybrid_max_hot`` replicated rows on every
rank. The planner does not look at key frequencies, so it never picks hybrid on its own.

:func:`check_plan` raises :class:`~terarec.errors.ConfigError` naming how many bytes are missing
on which rank and which tables sit there; :func:`describe_plan` prints the table, placement,
ranks and bytes per GPU and per host before anything is allocated. Plans are JSON
(:meth:`ShardingPlan.to_json`), so a user can write one by hand and load it with
:func:`load_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from terarec.distributed.hybrid import DEFAULT_MAX_HOT
from terarec.embedding.config import TableConfig
from terarec.embedding.plan import ShardingPlan, TablePlacement, placed_bytes, table_bytes
from terarec.errors import ConfigError
from terarec.utils.atomic import write_bytes_atomic

BALANCE_SLACK = 1.25


@dataclass
class PlannerConfig:
    """What the planner knows about the job.

    Args:
        world_size: number of ranks (GPUs).
        device_memory: bytes one device may spend on embeddings.
        local_world_size: ranks per host (for the per-host totals).
        batch_per_rank: samples per rank per step (sets when replication is cheaper).
        lookups: table name -> keys looked up per sample (default: its slot count).
        replicate_fraction: a replica may use at most this share of a device.
        hybrid: names of tables to place ``hybrid`` (HybridSparseEmbedding tables always are).
        hybrid_max_hot: replicated (frequent) rows of a hybrid table, for its bytes.
        column_min_dim / column_min_block: smallest ``dim`` split column-wise, smallest block.
    """

    world_size: int
    device_memory: int
    local_world_size: int | None = None
    batch_per_rank: int = 1024
    lookups: dict[str, float] = field(default_factory=dict)
    replicate_fraction: float = 0.05
    hybrid: set[str] = field(default_factory=set)
    hybrid_max_hot: int = DEFAULT_MAX_HOT
    column_min_dim: int = 64
    column_min_block: int = 16

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ConfigError("PlannerConfig.world_size", "a positive integer", self.world_size)
        if self.device_memory <= 0:
            raise ConfigError("PlannerConfig.device_memory", "a positive byte count",
                              self.device_memory)
        if self.local_world_size is None:
            self.local_world_size = self.world_size


def _lookups(cfg: TableConfig, pc: PlannerConfig) -> float:
    return float(pc.lookups.get(cfg.name, cfg.slot_num))


def _hot_bytes(cfg: TableConfig, hot_rows: int) -> int:
    """Bytes of the replicated rows of a hybrid table."""
    return min(hot_rows, cfg.max_vocabulary_size) * table_bytes(cfg) // cfg.max_vocabulary_size


def bytes_per_rank(tables: list[TableConfig], plan: ShardingPlan, world: int,
                   hot_rows: int = DEFAULT_MAX_HOT) -> dict[int, int]:
    """Embedding bytes (weights + optimizer states) on every rank under ``plan``
    (``hot_rows``: replicated rows of each hybrid table)."""
    out = dict.fromkeys(range(world), 0)
    for cfg in tables:
        p = plan[cfg.name]
        for r, b in placed_bytes(cfg, p).items():
            out[r] = out.get(r, 0) + b + (_hot_bytes(cfg, hot_rows) if p.kind == "hybrid" else 0)
    return out


def _column_ranks(cfg: TableConfig, b: int, pc: PlannerConfig,
                  mem: dict[int, int]) -> list[int] | None:
    """The fewest least-filled ranks whose column blocks of ``cfg`` fit, or None."""
    if cfg.dim < pc.column_min_dim:
        return None
    by_room = sorted(mem, key=lambda r: (mem[r], r))
    for k in range(2, min(pc.world_size, cfg.dim // pc.column_min_block) + 1):
        ranks = by_room[:k]
        if all(mem[r] + -(-b // k) <= pc.device_memory for r in ranks):
            return sorted(ranks)
    return None


def propose(tables: list[TableConfig], pc: PlannerConfig) -> ShardingPlan:
    """A plan that fits ``pc.device_memory`` per rank and balances lookups (see module doc)."""
    w = pc.world_size
    every = list(range(w))
    if w == 1:
        plan = ShardingPlan({c.name: TablePlacement("table_wise", [0]) for c in tables})
        check_plan(tables, plan, pc)
        return plan
    placements: dict[str, TablePlacement] = {}
    mem = dict.fromkeys(every, 0)
    load = dict.fromkeys(every, 0.0)
    rest = []
    for cfg in tables:
        b, look = table_bytes(cfg), _lookups(cfg, pc)
        routed_rows = 2 * pc.batch_per_rank * look
        if cfg.name in pc.hybrid or cfg.embedding_type == "HybridSparseEmbedding":
            placements[cfg.name] = TablePlacement("hybrid", every)
            for r in every:
                mem[r] += -(-b // w) + _hot_bytes(cfg, pc.hybrid_max_hot)
                load[r] += look / w
        elif b <= pc.replicate_fraction * pc.device_memory and cfg.max_vocabulary_size <= routed_rows:
            placements[cfg.name] = TablePlacement("replicated", every)
            for r in every:
                mem[r] += b
        else:
            rest.append(cfg)
    fair = sum(_lookups(c, pc) for c in rest) / w
    for cfg in sorted(rest, key=lambda c: (-table_bytes(c), c.name)):
        b, look = table_bytes(cfg), _lookups(cfg, pc)
        r = min(every, key=lambda k: (load[k], mem[k], k))
        if mem[r] + b <= pc.device_memory and load[r] + look <= BALANCE_SLACK * max(fair, look):
            placements[cfg.name] = TablePlacement("table_wise", [r])
            mem[r] += b
            load[r] += look
        elif b > pc.device_memory and (cols := _column_ranks(cfg, b, pc, mem)) is not None:
            placements[cfg.name] = TablePlacement("column_wise", cols)
            for k in cols:
                mem[k] += -(-b // len(cols))
                load[k] += look / len(cols)
        else:
            placements[cfg.name] = TablePlacement("row_wise", every)
            for k in every:
                mem[k] += -(-b // w)
                load[k] += look / w
    plan = ShardingPlan({c.name: placements[c.name] for c in tables})
    check_plan(tables, plan, pc)
    return plan


def check_plan(tables: list[TableConfig], plan: ShardingPlan, pc: PlannerConfig) -> None:
    """Raise :class:`ConfigError` when a table lacks a placement, names a rank outside the
    world, or a rank's tables exceed ``pc.device_memory`` (with the bytes missing)."""
    for cfg in tables:
        p = plan[cfg.name]
        if any(r >= pc.world_size for r in p.ranks):
            raise ConfigError(f"sharding plan, table {cfg.name!r}.ranks",
                              f"ranks below the world size {pc.world_size}", p.ranks)
        if p.kind in ("replicated", "hybrid") and sorted(p.ranks) != list(range(pc.world_size)):
            raise ConfigError(f"sharding plan, table {cfg.name!r}.ranks",
                              f"every rank for a {p.kind} table", p.ranks)
        if p.kind == "column_wise" and len(p.ranks) > cfg.dim:
            raise ConfigError(f"sharding plan, table {cfg.name!r}.ranks",
                              f"at most dim={cfg.dim} ranks (one column block each)", p.ranks)
    used = bytes_per_rank(tables, plan, pc.world_size, pc.hybrid_max_hot)
    over = {r: b - pc.device_memory for r, b in used.items() if b > pc.device_memory}
    if not over:
        return
    lines = []
    for r, missing in sorted(over.items()):
        names = [c.name for c in tables if r in placed_bytes(c, plan[c.name])]
        lines.append(f"rank {r} needs {used[r]:,} bytes but has {pc.device_memory:,} "
                     f"({missing:,} bytes missing; tables {names})")
    total = sum(table_bytes(c) for c in tables)
    raise ConfigError(
        "sharding plan", "embedding tables that fit the device memory",
        f"{sum(over.values()):,} bytes missing in total", hint="; ".join(lines)
        + f". All tables need {total:,} bytes at full capacity vs {pc.world_size} x "
        f"{pc.device_memory:,} available: add GPUs, lower workspace_size_per_gpu_in_mb or "
        "use an optimizer with fewer states")


def describe_plan(tables: list[TableConfig], plan: ShardingPlan,
                  pc: PlannerConfig | None = None, world_size: int | None = None) -> str:
    """Table, placement, ranks, bytes; then bytes per GPU and per host (print before
    allocating)."""
    world = pc.world_size if pc else (world_size or 1 + max(
        r for c in tables for r in plan[c.name].ranks))
    local = (pc.local_world_size if pc else None) or world
    head = (f"{'table':<20} {'kind':<11} {'ranks':<14} {'rows':>12} {'dim':>5} "
            f"{'bytes':>16} {'bytes/rank':>16}")
    lines = [head, "-" * len(head)]
    for cfg in tables:
        p = plan[cfg.name]
        b = table_bytes(cfg)
        per = max(placed_bytes(cfg, p).values())
        ranks = str(p.ranks) if len(p.ranks) <= 4 else f"[{p.ranks[0]}..{p.ranks[-1]}]"
        lines.append(f"{cfg.name:<20} {p.kind:<11} {ranks:<14} {cfg.max_vocabulary_size:>12,} "
                     f"{cfg.dim:>5} {b:>16,} {per:>16,}")
    used = bytes_per_rank(tables, plan, world, pc.hybrid_max_hot if pc else DEFAULT_MAX_HOT)
    for r in range(world):
        cap = f" of {pc.device_memory:,} ({100 * used[r] / pc.device_memory:.1f}%)" if pc else ""
        lines.append(f"GPU rank {r} (host {r // local}): {used[r]:,} bytes{cap}")
    for h in range(-(-world // local)):
        tot = sum(used[r] for r in range(h * local, min(world, (h + 1) * local)))
        lines.append(f"host {h}: {tot:,} bytes on its GPUs")
    return "\n".join(lines)


def hugectr_plan(tables: list[TableConfig], world_size: int) -> ShardingPlan:
    """HugeCTR's own placement by embedding type: DistributedSlot -> row_wise over every rank;
    LocalizedSlot -> slot ``i`` on rank ``i mod N``; Hybrid -> hybrid over every rank."""
    every = list(range(world_size))
    out = {}
    for cfg in tables:
        kind = "table_wise" if cfg.is_localized else "row_wise"
        if cfg.embedding_type == "HybridSparseEmbedding":
            kind = "hybrid"
        out[cfg.name] = TablePlacement(kind, every)
    return ShardingPlan(out)


def save_plan(plan: ShardingPlan, path: str | Path) -> None:
    write_bytes_atomic(path, (plan.to_json() + "\n").encode())


def load_plan(path: str | Path, tables: list[TableConfig], world_size: int) -> ShardingPlan:
    """Read a (hand-written) plan and check it covers ``tables`` on ``world_size`` ranks."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("sharding plan file", "a readable JSON file", str(path),
                          hint=str(exc)) from None
    plan = ShardingPlan.from_json(text)
    extra = sorted(set(plan.placements) - {c.name for c in tables})
    if extra:
        raise ConfigError(f"sharding plan {str(path)!r}", "placements only for tables of the "
                          f"model {[c.name for c in tables]}", extra)
    big = 1 << 62
    check_plan(tables, plan, PlannerConfig(world_size, big))
    return plan

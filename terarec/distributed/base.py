"""``ShardedTableBase``: what every sharding strategy shares.

Owns the local shard (a plain single-device :class:`EmbeddingTable` holding the rows this rank
owns), learning rate / scaler / freeze, and the file side: gathering the rows of every shard to
one rank in HugeCTR's ``key`` / ``emb_vector`` / ``slot_id`` layout with the matching optimizer
state, and loading a global file on any number of ranks (each rank keeps the keys it owns).

Seeding: building a sharded table draws exactly one seed from the generator on every rank,
owner or not, and hands it to the shard, so a key starts from the same vector as in the
unsharded table and the generator stays in step for whatever is built after the tables.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from terarec.distributed import comm, env, state_format
from terarec.distributed.shard_index import KeyMap, MappedDirectIndex
from terarec.distributed.types import LookupContext
from terarec.embedding.config import TableConfig
from terarec.embedding.init import draw_seed
from terarec.embedding.plan import TablePlacement
from terarec.embedding.table import EmbeddingTable
from terarec.embedding.table_io import STEP_KEY
from terarec.errors import ConfigError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def _np_keys(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.int64).reshape(-1)


class ShardedTableBase(nn.Module):
    """Base of the strategies; subclasses set ``self.shard`` via :meth:`_make_shard`.

    Args:
        config: what the table is (unchanged by sharding).
        placement: where it lives.
        device: this rank's device.
        generator: seeds the initial values (one draw per table, on every rank).
        group: the process group (default: the world).
    """

    def __init__(self, config: TableConfig, placement: TablePlacement,
                 device: torch.device | str | None, generator: torch.Generator | None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.config = config
        self.placement = placement
        self.group = group
        self.world = comm.world_size(group)
        self.rank = comm.rank(group)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        bad = [r for r in placement.ranks if r >= self.world]
        if bad:
            raise ConfigError(f"sharding plan, table {config.name!r}.ranks",
                              f"ranks below the world size {self.world}", placement.ranks)
        if placement.tier != "device":
            raise ConfigError(f"sharding plan, table {config.name!r}.tier",
                              '"device" (host and ssd tiers are not executed by the sharded '
                              "collection yet)", placement.tier)
        self.seed = draw_seed(generator)
        self.shard: EmbeddingTable | None = None
        self.frozen = False
        self._lr = 0.0
        self._scaler = 1.0
        self._prepared: tuple[Arrays, bytes] | None = None
        self._loaded: tuple[np.ndarray, np.ndarray | None] | None = None

    #: Whether a :class:`~terarec.distributed.fused.FusedLookup` may run this table together
    #: with others (one collective per phase for all of them).
    fusable = False
    #: Whether a world of one runs the shard's own (unsharded) lookup.
    local_shortcut = True

    # ------------------------------------------------------------------ shard
    def _make_shard(self, capacity: int, index: str = "hash",
                    key_maps: tuple[KeyMap, KeyMap] | None = None) -> EmbeddingTable:
        """This rank's shard; ``key_maps`` (key -> local row, row -> key) make a direct index
        over local rows (:mod:`terarec.distributed.shard_index`) instead of ``index``."""
        cfg = dataclasses.replace(self.config, max_vocabulary_size=int(capacity))
        shard = EmbeddingTable(cfg, self.device, torch.Generator().manual_seed(0),
                               index="direct" if key_maps else index)
        if key_maps is not None:
            shard._index = MappedDirectIndex(int(capacity), self.device, self.config.name,
                                             *key_maps)
            shard.index_kind = "mapped"  # rows are not keys: keeps the one-hot GPU path off
        shard.seed = self.seed
        return shard

    @property
    def local_only(self) -> bool:
        """A world of one: the shard is the whole table and a lookup is the plain table's
        (no exchange, no de-duplication; the GPU fast path applies where it would), unless
        ``TERAREC_EXCHANGE_AT_ONE_RANK`` asks for the sharded path."""
        return (self.world == 1 and self.shard is not None and self.local_shortcut
                and not env.exchange_at_one_rank())

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def num_keys(self) -> int:
        """Keys held by this rank's shard."""
        return self.shard.num_keys if self.shard is not None else 0

    def check_errors(self) -> None:
        """Raise an error this rank's shard (or the slot exchange) recorded on the device; local,
        one flag read each."""
        shard = getattr(self, "shard", None)
        if shard is not None and hasattr(shard, "check_errors"):
            shard.check_errors()
        exchange = getattr(self, "_exchange", None)
        if exchange is not None:
            exchange.check_errors()

    def owns(self, keys: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """Bool mask: which ``keys`` (first seen in ``slots``) this rank's shard holds."""
        raise NotImplementedError

    def slots_needed(self) -> bool:
        """Whether ownership depends on the slot (then loading needs ``slot_id``)."""
        return False

    # ------------------------------------------------------------------ settings
    def set_learning_rate(self, lr: float) -> None:
        self._lr = float(lr)
        if self.shard is not None:
            self.shard.set_learning_rate(lr)

    @property
    def scaler(self) -> float:
        return self._scaler

    @scaler.setter
    def scaler(self, value: float) -> None:
        self._scaler = float(value)
        if self.shard is not None:
            self.shard.scaler = value

    def freeze(self) -> None:
        self.frozen = True
        if self.shard is not None:
            self.shard.freeze()

    def unfreeze(self) -> None:
        self.frozen = False
        if self.shard is not None:
            self.shard.unfreeze()

    def reset_state(self) -> None:
        if self.shard is not None:
            self.shard.reset_state()

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, kind={self.placement.kind}, ranks={self.placement.ranks}, "
                f"rank={self.rank}/{self.world}, local_keys={self.num_keys}")

    # ------------------------------------------------------------------ phases
    def forward(self, sparse: Any) -> torch.Tensor:
        if sparse.slot_num != self.config.slot_num:
            raise ConfigError(f"SparseEmbedding {self.name!r} input {self.config.input_name!r}",
                              f"slot_num={self.config.slot_num}", sparse.slot_num)
        if self.local_only:
            assert self.shard is not None  # noqa: S101 - local_only says so
            return self.shard(sparse)
        ctx = self.input_dist(sparse)
        return self.output_dist(ctx, self.lookup(ctx))

    def input_dist(self, sparse: Any) -> LookupContext:
        raise NotImplementedError

    def lookup(self, ctx: LookupContext) -> torch.Tensor:
        raise NotImplementedError

    def output_dist(self, ctx: LookupContext, vectors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ export (collective)
    def _exports(self) -> bool:
        """Whether this rank's shard contributes rows to the global file."""
        return self.shard is not None

    def local_export(self) -> Arrays:
        """This rank's rows: keys, vectors, slot of every key (internal, always present)."""
        if self.shard is None or not self._exports():
            z = np.zeros(0, np.int64)
            return z, np.zeros((0, self.config.dim), np.float32), z.astype(np.uint64)
        keys, vectors, _ = self.shard.export()
        slots = self.shard.row_slots[self.shard.index.rows()].cpu().numpy().astype(np.uint64)
        return keys, vectors, slots

    def local_optimizer_state(self) -> state_format.State:
        if self.shard is None or not self._exports():
            n = np.zeros(0, np.int64)
            out = {s: (n, np.zeros((0, self.config.dim), np.float32))
                   for s in state_format.state_names(self.config)}
            if state_format.is_lazy(self.config):
                out["last_step"] = (n, n.copy())
            out[STEP_KEY] = (n, np.array([-1], np.int64))
            return out
        return self.shard.optimizer_state()

    def _gather(self, arr: np.ndarray, dst: int | None) -> np.ndarray | None:
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
        if arr.dtype == np.uint64:
            t = torch.from_numpy(arr.astype(np.int64)).to(self.device)
        if dst is None:
            out = comm.all_gather_rows(t, group=self.group)[0]
        else:
            out = comm.gather_rows(t, dst, self.group)
        if out is None:
            return None
        res = out.cpu().numpy()
        return res.astype(np.uint64) if arr.dtype == np.uint64 else res

    def _collect(self, dst: int | None) -> tuple[Arrays, bytes] | None:
        return self._gather_all(self.local_export(), self.local_optimizer_state(), dst)

    def _gather_all(self, local: Arrays, state: state_format.State,
                    dst: int | None) -> tuple[Arrays, bytes] | None:
        """Gather every rank's ``local`` rows and their optimizer ``state`` (collective)."""
        keys, vectors, slots = local
        g_keys = self._gather(keys, dst)
        g_vec = self._gather(vectors, dst)
        g_slots = self._gather(slots, dst)
        g_state: state_format.State = {}
        for name, (_k, v) in state.items():
            if name == STEP_KEY:
                continue
            g = self._gather(np.ascontiguousarray(v), dst)
            if g is not None:
                g_state[name] = (g_keys, g)  # type: ignore[assignment]
        step = torch.tensor([int(state[STEP_KEY][1].reshape(-1)[0])], device=self.device)
        if self.world > 1:
            dist.all_reduce(step, op=dist.ReduceOp.MAX, group=self.group)
        if g_keys is None:
            return None
        g_state[STEP_KEY] = (np.zeros(0, np.int64), np.array([max(int(step), 0)], np.int64))
        public_slots = g_slots if self.config.is_localized else None
        arrays = (g_keys, np.ascontiguousarray(g_vec, np.float32), public_slots)
        return arrays, state_format.to_bytes(self.config, g_state)

    def prepare_export(self, dst: int = 0) -> None:
        """Collective: gather every shard to ``dst``; its next :meth:`export` and
        :meth:`optimizer_state_bytes` return the gathered arrays without communicating."""
        self._prepared = self._collect(dst)

    def clear_prepared(self) -> None:
        self._prepared = None

    def export(self) -> Arrays:
        """The whole table in HugeCTR's arrays. Collective (every rank calls it and gets the
        whole table) unless :meth:`prepare_export` ran first on this rank."""
        if self._prepared is not None:
            return self._prepared[0]
        collected = self._collect(None)
        assert collected is not None  # noqa: S101 - all-gather returns on every rank
        return collected[0]

    def optimizer_state_bytes(self) -> bytes:
        if self._prepared is not None:
            return self._prepared[1]
        collected = self._collect(None)
        assert collected is not None  # noqa: S101
        return collected[1]

    # ------------------------------------------------------------------ load (no communication)
    def _mask(self, keys: np.ndarray, slots: np.ndarray | None) -> np.ndarray:
        if self.shard is None:
            return np.zeros(keys.size, dtype=bool)
        if slots is None and self.slots_needed():
            raise ConfigError(f"loading sharded table {self.name!r}", "a slot_id file: this "
                              "placement assigns keys to ranks by slot", None)
        k = torch.from_numpy(keys).to(self.device)
        s = torch.from_numpy(slots.astype(np.int64)).to(self.device) if slots is not None \
            else torch.zeros_like(k)
        return self.owns(k, s).cpu().numpy()

    def load(self, keys: Any, vectors: Any, slot_ids: Any = None) -> None:
        """Overwrite the rows of ``keys`` that this rank owns (global files load on any number
        of ranks). Not collective."""
        k = _np_keys(keys)
        v = vectors.detach().cpu().numpy() if torch.is_tensor(vectors) else np.asarray(vectors)
        v = v.reshape(k.size, self.config.dim)
        s = None if slot_ids is None else _np_keys(slot_ids)
        self._loaded = (k, s)
        m = self._mask(k, s)
        if self.shard is not None and m.any():
            self.shard.load(k[m], v[m], None if s is None else s[m])

    def load_optimizer_state(self, state: state_format.State) -> None:
        if self.shard is None:
            return
        any_keys = next((v[0] for n, v in state.items() if n != STEP_KEY), None)
        if any_keys is None:  # no per-row states (SGD): only the step counter
            self.shard.load_optimizer_state(state)
            return
        slots = None
        if self._loaded is not None and self._loaded[1] is not None \
                and np.array_equal(self._loaded[0], any_keys):
            slots = self._loaded[1]
        m = self._mask(_np_keys(any_keys), slots)
        self.shard.load_optimizer_state(state_format.select(state, m))

    def load_optimizer_state_bytes(self, data: bytes, keys: np.ndarray | None = None) -> None:
        """Read a (gathered or one-process) optimizer-state file; rows belong to ``keys`` or,
        by default, to the keys of the last :meth:`load` (the ``key`` file saved with it)."""
        if keys is None:
            if self._loaded is None:
                raise ConfigError(f"sharded table {self.name!r} optimizer state",
                                  "load_sparse_weights(...) before the optimizer states, or "
                                  "explicit keys", None)
            keys = self._loaded[0]
        where = f"embedding table {self.name!r} sparse optimizer state file"
        self.load_optimizer_state(state_format.from_bytes(self.config, data, _np_keys(keys),
                                                          where))

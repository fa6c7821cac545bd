"""Key -> row indexes for embedding tables, in plain vectorised torch (CPU and CUDA).

Owns two :class:`~terarec.embedding.types.KeyIndex` implementations:

* :class:`HashIndex` - arbitrary int64 keys (any value, including negative and > 2**40),
  rows handed out in first-seen order 0, 1, 2, ... (like HugeCTR's hash table value index).
  Open addressing with linear probing; every probing round is one batch of tensor ops over all
  keys still searching, so there is no per-key Python loop. The slot array grows (rehash) to
  keep the load factor <= 1/2; rows never move.
* :class:`DirectIndex` - keys known to lie in ``[0, capacity)`` (tables sized by
  ``slot_size_array`` with per-slot offsets, HugeCTR's ``LocalizedSlotSparseEmbeddingOneHot``):
  row = key, no probing at all.

Both raise :class:`~terarec.errors.CapacityError` instead of silently overwriting rows.

:class:`RecyclingHashIndex` (tables with an eviction policy, :mod:`terarec.embedding.eviction`)
is a :class:`HashIndex` whose keys can be removed: a removed key's slot becomes a tombstone
(probing walks past it, inserts may reuse it) and its row goes to a free list that later inserts
take first (lowest row first).
"""

from __future__ import annotations

import torch

from terarec.embedding.mix import mix64
from terarec.embedding.types import InsertResult
from terarec.errors import CapacityError

_MIN_SLOTS = 64
_EMPTY = -1  # slot row of a never-used slot (ends a probe)
_TOMBSTONE = -2  # slot row of a removed key (a probe walks past it)


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def _first_positions(inverse: torch.Tensor, num_unique: int) -> torch.Tensor:
    """Index of the first occurrence of each unique value given ``torch.unique``'s inverse."""
    n = inverse.numel()
    pos = torch.arange(n, device=inverse.device)
    first = torch.full((num_unique,), n, dtype=torch.int64, device=inverse.device)
    return first.scatter_reduce_(0, inverse, pos, reduce="amin")


def _capacity_error(name: str, capacity: int, needed: int) -> CapacityError:
    return CapacityError(
        f"embedding table {name!r} is full: {needed} distinct keys needed but its capacity "
        f"(max_vocabulary_size) is {capacity}. Increase workspace_size_per_gpu_in_mb "
        f"(or the slot_size_array) of this embedding."
    )


class KeyIndexBase:
    """What both indexes share: capacity, device, the table name for errors, ``clear()``."""

    def __init__(self, capacity: int, device: torch.device | str | None = None,
                 name: str = "") -> None:
        if capacity <= 0:
            raise CapacityError(f"embedding table {name!r}: capacity must be positive, "
                                f"got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.name = name
        self.clear()

    def clear(self) -> None:
        raise NotImplementedError


class HashIndex(KeyIndexBase):
    """Vectorised open-addressing hash index (see module docstring).

    Args:
        capacity: maximum number of distinct keys (the table's max_vocabulary_size).
        device: where the index tensors live.
        name: table name used in error messages.

    Example:
        >>> idx = HashIndex(8)
        >>> idx.lookup_or_insert(torch.tensor([7, 3, 7, 2**50])).tolist()
        [0, 1, 0, 2]
        >>> idx.lookup(torch.tensor([3, 5])).tolist()
        [1, -1]
    """


    def clear(self) -> None:
        self._num_keys = 0
        self._alloc_slots(_MIN_SLOTS)
        self._row_keys = torch.empty(0, dtype=torch.int64, device=self.device)

    def _alloc_slots(self, n: int) -> None:
        self._slot_keys = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._slot_rows = torch.full((n,), -1, dtype=torch.int64, device=self.device)

    @property
    def num_keys(self) -> int:
        return self._num_keys

    @property
    def row_extent(self) -> int:
        return self._num_keys

    @property
    def num_slots(self) -> int:
        return self._slot_rows.numel()

    def _home(self, keys: torch.Tensor) -> torch.Tensor:
        return mix64(keys) & (self.num_slots - 1)

    def _probe(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows of ``keys`` (-1 if absent): linear probing, one vectorised round per distance."""
        out = torch.full_like(keys, -1)
        mask = self.num_slots - 1
        active = torch.arange(keys.numel(), device=keys.device)
        pos = self._home(keys)
        want = keys
        while active.numel():
            r = self._slot_rows[pos]
            hit = (r >= 0) & (self._slot_keys[pos] == want)
            out[active[hit]] = r[hit]
            go_on = (r != _EMPTY) & ~hit  # tombstones (RecyclingHashIndex) do not end a probe
            active, pos, want = active[go_on], (pos[go_on] + 1) & mask, want[go_on]
        return out

    def _place(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Store distinct keys that are not present yet. Slot conflicts go to the first key in
        sort order (stable, deterministic); the others probe on."""
        mask = self.num_slots - 1
        pos = self._home(keys)
        while keys.numel():
            free = self._slot_rows[pos] < 0
            cand = torch.nonzero(free).squeeze(1)
            sorted_pos, order = torch.sort(pos[cand], stable=True)
            lead = torch.ones_like(sorted_pos, dtype=torch.bool)
            lead[1:] = sorted_pos[1:] != sorted_pos[:-1]
            win = cand[order[lead]]
            self._slot_keys[pos[win]] = keys[win]
            self._slot_rows[pos[win]] = rows[win]
            placed = torch.zeros_like(free)
            placed[win] = True
            left = ~placed
            keys, rows, pos = keys[left], rows[left], (pos[left] + 1) & mask

    def _reserve(self, total_keys: int) -> None:
        """Grow the slot array (load factor <= 1/2) and the row -> key array."""
        want_slots = max(_MIN_SLOTS, _next_pow2(2 * total_keys))
        if want_slots > self.num_slots:
            self._alloc_slots(want_slots)
            n = self._num_keys
            self._place(self._row_keys[:n], torch.arange(n, device=self.device))
        if total_keys > self._row_keys.numel():
            size = min(self.capacity, max(total_keys, 2 * self._row_keys.numel(), 16))
            grown = torch.empty(size, dtype=torch.int64, device=self.device)
            grown[: self._num_keys] = self._row_keys[: self._num_keys]
            self._row_keys = grown

    def _find_new(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor]:
        """``(uniq, inverse, rows of uniq (-1: not in the index), positions in uniq of the new
        keys in first-seen order, their first positions in keys)``; raises the capacity error
        when the new keys do not fit."""
        keys = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        rows_u = self._probe(uniq)
        missing = torch.nonzero(rows_u < 0).squeeze(1)
        if missing.numel() == 0:
            return uniq, inverse, rows_u, missing, missing
        needed = self._num_keys + missing.numel()
        if needed > self.capacity:
            raise _capacity_error(self.name, self.capacity, needed)
        first = _first_positions(inverse, uniq.numel())
        new_first, order = torch.sort(first[missing])
        return uniq, inverse, rows_u, missing[order], new_first

    def insert(self, keys: torch.Tensor) -> InsertResult:
        uniq, inverse, rows_u, missing, new_first = self._find_new(keys)
        if missing.numel() == 0:
            return InsertResult(rows_u[inverse], missing, missing)
        needed = self._num_keys + missing.numel()
        new_rows = torch.arange(self._num_keys, needed, device=self.device)
        rows_u[missing] = new_rows
        self._reserve(needed)
        self._place(uniq[missing], new_rows)
        self._row_keys[self._num_keys:needed] = uniq[missing]
        self._num_keys = needed
        return InsertResult(rows_u[inverse], new_rows, new_first)

    def lookup_or_insert(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows of ``keys``; unknown keys get the next free rows in first-seen order."""
        return self.insert(keys).rows

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows of ``keys``, -1 where a key is not in the index."""
        keys = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        return self._probe(uniq)[inverse]

    def keys(self) -> torch.Tensor:
        return self._row_keys[: self._num_keys].clone()

    def rows(self) -> torch.Tensor:
        return torch.arange(self._num_keys, device=self.device)


class DirectIndex(KeyIndexBase):
    """Direct-mapped index: key ``k`` lives in row ``k``; keys must be in ``[0, capacity)``."""


    def clear(self) -> None:
        self._used = torch.zeros(self.capacity, dtype=torch.bool, device=self.device)
        self._num_keys = 0
        self._extent = 0
        self._stale = False

    def mark_used(self, rows: torch.Tensor) -> None:
        """Record ``rows`` (in range, on the index's device) as used without a host sync; the
        counters are recomputed when next read (the GPU fast path of the tables uses this)."""
        from terarec.kernels import mark_rows

        mark_rows(self._used, rows)  # Triton on CUDA: writes only flags still unset
        self._stale = True

    def _refresh(self) -> None:
        if self._stale:
            self._stale = False
            used = torch.nonzero(self._used).squeeze(1)
            self._num_keys = int(used.numel())
            self._extent = int(used[-1]) + 1 if self._num_keys else 0

    @property
    def num_keys(self) -> int:
        self._refresh()
        return self._num_keys

    @property
    def row_extent(self) -> int:
        self._refresh()
        return self._extent

    def _check_range(self, keys: torch.Tensor) -> None:
        if keys.numel() == 0:
            return
        lo, hi = int(keys.min()), int(keys.max())
        if lo < 0 or hi >= self.capacity:
            bad = lo if lo < 0 else hi
            raise CapacityError(
                f"embedding table {self.name!r} is direct-mapped (keys must be in "
                f"[0, {self.capacity})) but got key {bad}. Check the slot offsets of the input, "
                f"or enlarge the slot_size_array / use a hash table."
            )

    def insert(self, keys: torch.Tensor) -> InsertResult:
        keys = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        self._check_range(keys)
        if not keys.is_cuda and bool(self._used[keys].all()):  # steady state: nothing new
            none = keys.new_empty(0)
            return InsertResult(keys.clone(), none, none)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        first = _first_positions(inverse, uniq.numel())
        is_new = torch.nonzero(~self._used[uniq]).squeeze(1)
        new_first, order = torch.sort(first[is_new])
        new_rows = uniq[is_new][order]
        if new_rows.numel():
            self._refresh()
            self._used[new_rows] = True
            self._num_keys += new_rows.numel()
            self._extent = max(self._extent, int(new_rows.max()) + 1)
        return InsertResult(keys.clone(), new_rows, new_first)

    def lookup_or_insert(self, keys: torch.Tensor) -> torch.Tensor:
        return self.insert(keys).rows

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        keys = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        inside = (keys >= 0) & (keys < self.capacity)
        safe = torch.where(inside, keys, torch.zeros_like(keys))
        return torch.where(inside & self._used[safe], keys, torch.full_like(keys, -1))

    def keys(self) -> torch.Tensor:
        return torch.nonzero(self._used).squeeze(1)

    def rows(self) -> torch.Tensor:
        return self.keys()


class RecyclingHashIndex(HashIndex):
    """A :class:`HashIndex` whose keys can be removed (:meth:`remove_rows`) and whose freed rows
    are reused by later inserts (lowest free row first, then new rows past ``row_extent``).

    ``keys()`` / ``rows()`` list the live rows only, ascending; ``row_extent`` is the high-water
    mark of rows ever used. Removed keys leave tombstones in the slot array; it is rebuilt from
    the live keys when live keys + tombstones would pass a load factor of 1/2.

    Example:
        >>> idx = RecyclingHashIndex(4)
        >>> idx.lookup_or_insert(torch.tensor([10, 11, 12])).tolist()
        [0, 1, 2]
        >>> idx.remove_rows(torch.tensor([1]))
        >>> idx.lookup_or_insert(torch.tensor([13, 12])).tolist()
        [1, 2]
        >>> idx.keys().tolist()
        [10, 13, 12]
    """

    def clear(self) -> None:
        super().clear()
        self._live = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._free = torch.empty(0, dtype=torch.int64, device=self.device)
        self._extent = 0
        self._tombstones = 0

    @property
    def row_extent(self) -> int:
        return self._extent

    def _rebuild(self, total_keys: int) -> None:
        """New slot array for ``total_keys`` keys (load factor <= 1/2), live keys re-placed."""
        live = self.rows()
        self._alloc_slots(max(_MIN_SLOTS, _next_pow2(2 * total_keys)))
        self._tombstones = 0
        self._place(self._row_keys[live], live)

    def _grow_rows(self, extent: int) -> None:
        if extent > self._row_keys.numel():
            size = min(self.capacity, max(extent, 2 * self._row_keys.numel(), 16))
            keys = torch.zeros(size, dtype=torch.int64, device=self.device)
            live = torch.zeros(size, dtype=torch.bool, device=self.device)
            keys[: self._extent] = self._row_keys[: self._extent]
            live[: self._extent] = self._live[: self._extent]
            self._row_keys, self._live = keys, live

    def insert(self, keys: torch.Tensor) -> InsertResult:
        uniq, inverse, rows_u, missing, new_first = self._find_new(keys)
        n_new = missing.numel()
        if n_new == 0:
            return InsertResult(rows_u[inverse], missing, missing)
        needed = self._num_keys + n_new
        reuse = min(n_new, self._free.numel())
        fresh = torch.arange(self._extent, self._extent + n_new - reuse, device=self.device)
        new_rows = torch.cat([self._free[:reuse], fresh])
        self._free = self._free[reuse:]
        rows_u[missing] = new_rows
        if 2 * (needed + self._tombstones) > self.num_slots:
            self._rebuild(needed)
        self._grow_rows(self._extent + fresh.numel())
        self._place(uniq[missing], new_rows)
        self._row_keys[new_rows] = uniq[missing]
        self._live[new_rows] = True
        self._extent += fresh.numel()
        self._num_keys = needed
        return InsertResult(rows_u[inverse], new_rows, new_first)

    def _slots_of(self, keys: torch.Tensor) -> torch.Tensor:
        """Slot position of each key (all present): linear probing as in ``_probe``."""
        out = torch.empty_like(keys)
        mask = self.num_slots - 1
        active = torch.arange(keys.numel(), device=keys.device)
        pos, want = self._home(keys), keys
        while active.numel():
            r = self._slot_rows[pos]
            hit = (r >= 0) & (self._slot_keys[pos] == want)
            out[active[hit]] = pos[hit]
            go_on = (r != _EMPTY) & ~hit
            active, pos, want = active[go_on], (pos[go_on] + 1) & mask, want[go_on]
        return out

    def remove_rows(self, rows: torch.Tensor) -> None:
        """Remove the keys of ``rows`` (distinct live rows); the rows become free for reuse."""
        rows = rows.reshape(-1).to(device=self.device, dtype=torch.int64)
        if rows.numel() == 0:
            return
        if rows.numel() != torch.unique(rows).numel() or not bool(
                ((rows >= 0) & (rows < self._extent)).all() and self._live[rows].all()):
            raise ValueError(f"embedding table {self.name!r}: remove_rows needs distinct live "
                             f"rows, got {rows.tolist()[:16]}")
        self._slot_rows[self._slots_of(self._row_keys[rows])] = _TOMBSTONE
        self._tombstones += rows.numel()
        self._live[rows] = False
        self._free = torch.sort(torch.cat([self._free, rows])).values
        self._num_keys -= rows.numel()

    def keys_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Keys of live ``rows``."""
        return self._row_keys[rows]

    def keys(self) -> torch.Tensor:
        return self._row_keys[self.rows()].clone()

    def rows(self) -> torch.Tensor:
        return torch.nonzero(self._live[: self._extent]).squeeze(1)


INDEX_TYPES = {"hash": HashIndex, "direct": DirectIndex}

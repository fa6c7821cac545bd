"""TorchRec's sparse input types: :class:`JaggedTensor` and :class:`KeyedJaggedTensor`.

Owns the TorchRec layout and its validation, nothing about tables. A ``KeyedJaggedTensor``
(KJT) holds the ids of ``K`` features for a batch of ``B`` samples:

* ``values``: every id, grouped key by key (all ids of key 0, then of key 1, ...), and inside
  a key sample by sample;
* ``lengths``: shape ``[K * B]``, key-major: ``lengths[k * B + b]`` ids of sample ``b``,
  key ``k``;
* ``offsets``: shape ``[K * B + 1]``, the running sum of ``lengths`` starting at 0;
* ``weights`` (optional): one float per id, same layout as ``values``.

``KeyedJaggedTensor.permute`` / ``split`` / ``concat`` regroup keys (with their lengths, values
and weights) as TorchRec's do.

This is the transpose of terarec's :class:`~terarec.sparse.SparseInput` (sample-major rows
``b * S + s``); :mod:`terarec.torchrec.layout` converts one into the other.
"""

from __future__ import annotations

import operator

import torch

from terarec.errors import ConfigError


def _as_index_tensor(t: torch.Tensor, where: str) -> torch.Tensor:
    if not torch.is_tensor(t):
        t = torch.as_tensor(t)
    if t.dim() != 1:
        raise ConfigError(where, "a 1-D tensor", f"a tensor of shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(where, "an integer tensor", t.dtype)
    return t


def _index_list(indices: object, where: str) -> list[int]:
    """``indices`` (a list / tuple of ints or a 1-D integer tensor) as a list of ints."""
    if torch.is_tensor(indices):
        indices = _as_index_tensor(indices, where).tolist()  # type: ignore[arg-type]
    if not isinstance(indices, (list, tuple)):
        raise ConfigError(where, "a list of int", indices)
    try:
        if any(isinstance(i, bool) for i in indices):
            raise TypeError("bool")
        return [operator.index(i) for i in indices]
    except TypeError:
        raise ConfigError(where, "a list of int", indices) from None


def _offsets_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=out[1:])
    return out


def _check_jagged(where: str, values: torch.Tensor, weights: torch.Tensor | None,
                  lengths: torch.Tensor | None, offsets: torch.Tensor | None,
                  rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``(lengths, offsets)`` of a jagged layout; errors name the argument."""
    if lengths is None and offsets is None:
        raise ConfigError(where, "lengths or offsets", None)
    if lengths is not None:
        lengths = _as_index_tensor(lengths, f"{where} lengths")
        if lengths.numel() and int(lengths.min()) < 0:
            raise ConfigError(f"{where} lengths", "non-negative lengths", int(lengths.min()))
    if offsets is not None:
        offsets = _as_index_tensor(offsets, f"{where} offsets")
        if offsets.numel() == 0 or int(offsets[0]) != 0:
            raise ConfigError(f"{where} offsets", "a tensor starting at 0 (one more entry than "
                              "lengths)", offsets.tolist()[:8])
        steps = offsets[1:] - offsets[:-1]
        if steps.numel() and int(steps.min()) < 0:
            raise ConfigError(f"{where} offsets", "non-decreasing offsets",
                              offsets.tolist()[:16])
        if lengths is not None:
            if lengths.numel() + 1 != offsets.numel():
                raise ConfigError(f"{where} offsets", f"{lengths.numel() + 1} entries "
                                  f"(len(lengths) + 1)", offsets.numel())
            if not torch.equal(steps.to(torch.int64), lengths.to(torch.int64).to(steps.device)):
                raise ConfigError(f"{where} offsets", "offsets[i+1] - offsets[i] == lengths[i]",
                                  offsets.tolist()[:16])
        lengths = steps if lengths is None else lengths
    lengths = lengths.to(torch.int64)  # type: ignore[union-attr]  (set by either branch)
    offsets = offsets.to(torch.int64) if offsets is not None else _offsets_from_lengths(lengths)
    total = int(offsets[-1])
    if values.dim() != 1 and not (rows and values.dim() >= 1):
        raise ConfigError(f"{where} values", "a 1-D tensor", f"shape {tuple(values.shape)}")
    n = values.shape[0]
    if n != total:
        raise ConfigError(f"{where} values", f"{total} entries (the sum of lengths)",
                          f"{n} entries")
    if weights is not None and (weights.dim() != 1 or weights.numel() != n):
        raise ConfigError(f"{where} weights", f"a 1-D tensor of {n} entries "
                          "(one per value)", f"shape {tuple(weights.shape)}")
    return lengths, offsets


class JaggedTensor:
    """Ids of one feature for a batch: ``values`` split into rows of ``lengths``.

    Args:
        values: 1-D tensor of all ids, or ``[total, ...]`` rows (e.g. the embeddings an
            ``EmbeddingCollection`` returns); row ``i`` of the jagged layout is ``values[i]``.
        weights: optional per-value weights (same shape as ``values``).
        lengths: ids per row, ``[B]``.
        offsets: ``[B + 1]`` running sum of lengths (either this or ``lengths``, or both).

    Example:
        >>> jt = JaggedTensor(torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 0, 1]))
        >>> jt.to_dense()
        [tensor([1, 2]), tensor([], dtype=torch.int64), tensor([3])]
    """

    def __init__(self, values: torch.Tensor, weights: torch.Tensor | None = None,
                 lengths: torch.Tensor | None = None,
                 offsets: torch.Tensor | None = None) -> None:
        self._values = values
        self._weights = weights
        self._lengths, self._offsets = _check_jagged("JaggedTensor", values, weights, lengths,
                                                     offsets, rows=True)

    def values(self) -> torch.Tensor:
        return self._values

    def weights(self) -> torch.Tensor:
        if self._weights is None:
            raise ConfigError("JaggedTensor.weights()", "a JaggedTensor built with weights",
                              None, hint="Use weights_or_none()")
        return self._weights

    def weights_or_none(self) -> torch.Tensor | None:
        return self._weights

    def lengths(self) -> torch.Tensor:
        return self._lengths

    def offsets(self) -> torch.Tensor:
        return self._offsets

    def to_dense(self) -> list[torch.Tensor]:
        """One tensor of values per row."""
        return list(torch.split(self._values, self._lengths.tolist()))

    def to_dense_weights(self) -> list[torch.Tensor] | None:
        if self._weights is None:
            return None
        return list(torch.split(self._weights, self._lengths.tolist()))

    def to_padded_dense(self, desired_length: int | None = None,
                        padding_value: float = 0.0) -> torch.Tensor:
        """``[B, L]`` values padded with ``padding_value`` (rows cut to ``desired_length``)."""
        rows = self.to_dense()
        width = desired_length if desired_length is not None else max(
            (r.numel() for r in rows), default=0)
        out = torch.full((len(rows), width), padding_value, dtype=self._values.dtype,
                         device=self._values.device)
        for i, r in enumerate(rows):
            n = min(r.numel(), width)
            out[i, :n] = r[:n]
        return out

    @staticmethod
    def from_dense(values: list[torch.Tensor],
                   weights: list[torch.Tensor] | None = None) -> JaggedTensor:
        """From one 1-D tensor per row."""
        lengths = torch.tensor([v.numel() for v in values], dtype=torch.int64)
        flat = torch.cat(values) if values else torch.empty(0, dtype=torch.int64)
        w = torch.cat(weights) if weights else None
        return JaggedTensor(flat, w, lengths=lengths)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedTensor:
        w = self._weights
        return JaggedTensor(self._values.to(device, non_blocking=non_blocking),
                            None if w is None else w.to(device, non_blocking=non_blocking),
                            self._lengths.to(device, non_blocking=non_blocking),
                            self._offsets.to(device, non_blocking=non_blocking))

    def __repr__(self) -> str:
        return f"JaggedTensor(values={self._values}, lengths={self._lengths})"


class KeyedJaggedTensor:
    """Ids of several features for one batch, in TorchRec's key-major layout (module docstring).

    Args:
        keys: feature names (unique).
        values: 1-D ids, grouped key by key.
        weights: optional per-id weights (a weighted ``EmbeddingBagCollection``).
        lengths: ``[len(keys) * B]`` key-major lengths.
        offsets: ``[len(keys) * B + 1]`` (either this or ``lengths``, or both, consistent).
        stride: the batch size ``B`` (default ``len(lengths) // len(keys)``).

    Example:
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     ["f1", "f2"], torch.tensor([1, 2, 3, 4]), torch.tensor([2, 0, 1, 1]))
        >>> kjt.stride(), kjt.length_per_key()
        (2, [2, 2])
    """

    def __init__(self, keys: list[str], values: torch.Tensor,
                 weights: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                 offsets: torch.Tensor | None = None, stride: int | None = None) -> None:
        keys = list(keys)
        if any(not isinstance(k, str) for k in keys):
            raise ConfigError("KeyedJaggedTensor keys", "a list of str feature names", keys)
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ConfigError("KeyedJaggedTensor keys", "unique feature names", dup)
        if not torch.is_tensor(values):
            values = torch.as_tensor(values)
        self._keys = keys
        self._values = values
        self._weights = weights
        self._lengths, self._offsets = _check_jagged("KeyedJaggedTensor", values, weights,
                                                     lengths, offsets)
        n = self._lengths.numel()
        if stride is None:
            if keys and n % len(keys):
                raise ConfigError("KeyedJaggedTensor lengths", f"len(keys) * batch entries "
                                  f"(a multiple of {len(keys)} keys, key-major)", f"{n} entries")
            stride = n // len(keys) if keys else 0
        elif n != stride * len(keys):
            raise ConfigError("KeyedJaggedTensor lengths", f"len(keys) * stride = {len(keys)} * "
                              f"{stride} = {stride * len(keys)} entries", f"{n} entries")
        self._stride = int(stride)
        self._length_per_key: list[int] | None = None
        self._index = {k: i for i, k in enumerate(keys)}

    # --- constructors ---------------------------------------------------------------------------
    @staticmethod
    def from_lengths_sync(keys: list[str], values: torch.Tensor, lengths: torch.Tensor,
                          weights: torch.Tensor | None = None,
                          stride: int | None = None) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys, values, weights, lengths=lengths, stride=stride)

    @staticmethod
    def from_offsets_sync(keys: list[str], values: torch.Tensor, offsets: torch.Tensor,
                          weights: torch.Tensor | None = None,
                          stride: int | None = None) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys, values, weights, offsets=offsets, stride=stride)

    @staticmethod
    def from_jt_dict(jt_dict: dict[str, JaggedTensor]) -> KeyedJaggedTensor:
        """From ``{key: JaggedTensor}`` (every one with the same batch size)."""
        keys = list(jt_dict)
        strides = {k: jt.lengths().numel() for k, jt in jt_dict.items()}
        if len(set(strides.values())) > 1:
            raise ConfigError("KeyedJaggedTensor.from_jt_dict", "the same batch size for "
                              "every key", strides)
        jts = list(jt_dict.values())
        if not jts:
            return KeyedJaggedTensor([], torch.empty(0, dtype=torch.int64),
                                     lengths=torch.empty(0, dtype=torch.int64))
        with_w = [jt.weights_or_none() is not None for jt in jts]
        if any(with_w) and not all(with_w):
            raise ConfigError("KeyedJaggedTensor.from_jt_dict", "weights on every key or none",
                              dict(zip(keys, with_w)))
        weights = torch.cat([jt.weights() for jt in jts]) if all(with_w) else None
        return KeyedJaggedTensor(keys, torch.cat([jt.values() for jt in jts]), weights,
                                 lengths=torch.cat([jt.lengths() for jt in jts]))

    # --- accessors ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._keys)

    def values(self) -> torch.Tensor:
        return self._values

    def weights(self) -> torch.Tensor:
        if self._weights is None:
            raise ConfigError("KeyedJaggedTensor.weights()", "a KeyedJaggedTensor built with "
                              "weights", None, hint="Use weights_or_none()")
        return self._weights

    def weights_or_none(self) -> torch.Tensor | None:
        return self._weights

    def lengths(self) -> torch.Tensor:
        return self._lengths

    def offsets(self) -> torch.Tensor:
        return self._offsets

    def stride(self) -> int:
        """The batch size ``B``."""
        return self._stride

    def key_index(self, key: str) -> int:
        """Position of ``key`` in :meth:`keys`; a clear error for an unknown key."""
        if key not in self._index:
            raise ConfigError("KeyedJaggedTensor key", f"one of {self._keys}", key)
        return self._index[key]

    def length_per_key(self) -> list[int]:
        """Number of ids of each key (over the whole batch)."""
        if self._length_per_key is None:
            b = self._stride
            if not self._keys:
                self._length_per_key = []
            elif b == 0:
                self._length_per_key = [0] * len(self._keys)
            else:
                self._length_per_key = self._lengths.view(len(self._keys), b).sum(1).tolist()
        return list(self._length_per_key)

    def offset_per_key(self) -> list[int]:
        """Where each key's ids start in :meth:`values` (``len(keys) + 1`` entries)."""
        out = [0]
        for n in self.length_per_key():
            out.append(out[-1] + n)
        return out

    def __getitem__(self, key: str) -> JaggedTensor:
        i = self.key_index(key)
        opk = self.offset_per_key()
        lo, hi = opk[i], opk[i + 1]
        b = self._stride
        w = None if self._weights is None else self._weights[lo:hi]
        return JaggedTensor(self._values[lo:hi], w, lengths=self._lengths[i * b:(i + 1) * b])

    def to_dict(self) -> dict[str, JaggedTensor]:
        return {k: self[k] for k in self._keys}

    # --- key-wise regrouping (TorchRec's permute / split / concat) ------------------------------
    def permute(self, indices: list[int],
                indices_tensor: torch.Tensor | None = None) -> KeyedJaggedTensor:
        """A KJT of the keys ``[keys()[i] for i in indices]``, each with its lengths, values
        and weights (TorchRec's ``permute``; ``indices_tensor``, TorchRec's device copy of
        ``indices``, must hold the same indices when given).

        ``indices`` may leave keys out but may not repeat one (keys are unique here).

        Example:
            >>> kjt = KeyedJaggedTensor.from_lengths_sync(
            ...     ["f1", "f2"], torch.tensor([1, 2, 3, 4]), torch.tensor([2, 0, 1, 1]))
            >>> p = kjt.permute([1, 0])
            >>> p.keys(), p.values().tolist(), p.lengths().tolist()
            (['f2', 'f1'], [3, 4, 1, 2], [1, 1, 2, 0])
        """
        where = "KeyedJaggedTensor.permute(indices=...)"
        order = _index_list(indices, where)
        k = len(self._keys)
        bad = [i for i in order if not 0 <= i < k]
        if bad:
            raise ConfigError(where, f"key indices in 0..{k - 1} (keys {self._keys})", bad)
        dup = sorted({i for i in order if order.count(i) > 1})
        if dup:
            raise ConfigError(where, "each key index at most once (keys are unique)", dup)
        if indices_tensor is not None and \
                _index_list(indices_tensor, "KeyedJaggedTensor.permute(indices_tensor=...)") \
                != order:
            raise ConfigError("KeyedJaggedTensor.permute(indices_tensor=...)",
                              f"the same indices as indices={order}", indices_tensor.tolist())
        b, opk = self._stride, self.offset_per_key()
        dev = self._values.device
        pick = [torch.arange(opk[i], opk[i + 1], device=dev) for i in order]
        rows = torch.cat(pick) if pick else torch.empty(0, dtype=torch.int64, device=dev)
        lengths = [self._lengths[i * b:(i + 1) * b] for i in order]
        return KeyedJaggedTensor(
            [self._keys[i] for i in order], self._values[rows],
            None if self._weights is None else self._weights[rows],
            lengths=torch.cat(lengths) if lengths else self._lengths[:0], stride=b)

    def split(self, segments: list[int]) -> list[KeyedJaggedTensor]:
        """One KJT per segment, of ``segments[j]`` consecutive keys each (TorchRec's
        ``split``); ``sum(segments)`` must be ``len(keys())``, a 0 gives a KJT with no keys.

        Example:
            >>> kjt = KeyedJaggedTensor.from_lengths_sync(
            ...     ["f1", "f2", "f3"], torch.tensor([1, 2, 3]), torch.tensor([1, 0, 1, 0, 0, 1]))
            >>> [(s.keys(), s.values().tolist()) for s in kjt.split([1, 2])]
            [(['f1'], [1]), (['f2', 'f3'], [2, 3])]
        """
        where = "KeyedJaggedTensor.split(segments=...)"
        sizes = _index_list(segments, where)
        if any(n < 0 for n in sizes) or sum(sizes) != len(self._keys):
            raise ConfigError(where, f"non-negative segment sizes summing to the "
                              f"{len(self._keys)} keys {self._keys}", sizes)
        b, opk = self._stride, self.offset_per_key()
        out, start = [], 0
        for n in sizes:
            end = start + n
            lo, hi = opk[start], opk[end]
            out.append(KeyedJaggedTensor(
                self._keys[start:end], self._values[lo:hi],
                None if self._weights is None else self._weights[lo:hi],
                lengths=self._lengths[start * b:end * b], stride=b))
            start = end
        return out

    @staticmethod
    def concat(kjt_list: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
        """The keys of every KJT of ``kjt_list``, in order, as one KJT (TorchRec's ``concat``).

        Every KJT must have the same stride (batch size); weights on all of them or none; a key
        may appear in only one of them.

        Example:
            >>> a = KeyedJaggedTensor.from_lengths_sync(["f1"], torch.tensor([1]),
            ...                                         torch.tensor([1, 0]))
            >>> b = KeyedJaggedTensor.from_lengths_sync(["f2"], torch.tensor([2, 3]),
            ...                                         torch.tensor([0, 2]))
            >>> c = KeyedJaggedTensor.concat([a, b])
            >>> c.keys(), c.values().tolist(), c.lengths().tolist()
            (['f1', 'f2'], [1, 2, 3], [1, 0, 0, 2])
        """
        where = "KeyedJaggedTensor.concat(kjt_list=...)"
        if not isinstance(kjt_list, (list, tuple)) or not kjt_list:
            raise ConfigError(where, "a non-empty list of KeyedJaggedTensor", kjt_list)
        bad = [i for i, t in enumerate(kjt_list) if not isinstance(t, KeyedJaggedTensor)]
        if bad:
            raise ConfigError(where, "KeyedJaggedTensor entries",
                              {i: type(kjt_list[i]).__name__ for i in bad})
        strides = [t.stride() for t in kjt_list]
        if len(set(strides)) > 1:
            raise ConfigError(where, "KJTs of one stride (batch size)", strides)
        with_w = [t.weights_or_none() is not None for t in kjt_list]
        if any(with_w) and not all(with_w):
            raise ConfigError(where, "weights on every KJT or on none", with_w)
        keys = [k for t in kjt_list for k in t._keys]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ConfigError(where, "each key in one KJT only (keys are unique)", dup)
        weights = torch.cat([t.weights() for t in kjt_list]) if all(with_w) else None
        return KeyedJaggedTensor(keys, torch.cat([t.values() for t in kjt_list]), weights,
                                 lengths=torch.cat([t.lengths() for t in kjt_list]),
                                 stride=strides[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedJaggedTensor:
        w = self._weights
        return KeyedJaggedTensor(
            self._keys, self._values.to(device, non_blocking=non_blocking),
            None if w is None else w.to(device, non_blocking=non_blocking),
            lengths=self._lengths.to(device, non_blocking=non_blocking),
            offsets=self._offsets.to(device, non_blocking=non_blocking), stride=self._stride)

    @property
    def device(self) -> torch.device:
        return self._values.device

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return (f"KeyedJaggedTensor(keys={self._keys}, stride={self._stride}, "
                f"length_per_key={self.length_per_key()})")

"""TorchRec's ``KeyedTensor``: the pooled output of an ``EmbeddingBagCollection``.

Owns one dense ``[B, sum(dims)]`` tensor whose columns are split into named blocks (one per
feature, in order): ``kt["f"]`` is feature ``f``'s ``[B, dim]`` block.
"""

from __future__ import annotations

import torch

from terarec.errors import ConfigError


class KeyedTensor:
    """Named column blocks of one dense tensor.

    Args:
        keys: block names (unique).
        length_per_key: width of each block along ``key_dim``.
        values: the dense tensor; ``values.shape[key_dim] == sum(length_per_key)``.
        key_dim: the dimension the blocks split (1 for TorchRec's ``[B, sum dims]``).

    Example:
        >>> kt = KeyedTensor(["a", "b"], [2, 1], torch.arange(6.).view(2, 3))
        >>> kt["b"].tolist()
        [[2.0], [5.0]]
    """

    def __init__(self, keys: list[str], length_per_key: list[int], values: torch.Tensor,
                 key_dim: int = 1) -> None:
        keys, length_per_key = list(keys), [int(n) for n in length_per_key]
        if len(keys) != len(length_per_key):
            raise ConfigError("KeyedTensor length_per_key", f"{len(keys)} entries (one per key)",
                              length_per_key)
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ConfigError("KeyedTensor keys", "unique keys", dup)
        if not -values.dim() <= key_dim < values.dim():
            raise ConfigError("KeyedTensor key_dim", f"a dimension of a {values.dim()}-D tensor",
                              key_dim)
        if values.shape[key_dim] != sum(length_per_key):
            raise ConfigError("KeyedTensor values", f"size {sum(length_per_key)} along dim "
                              f"{key_dim} (sum of length_per_key)", tuple(values.shape))
        self._keys = keys
        self._lengths = length_per_key
        self._values = values
        self._key_dim = key_dim
        self._offsets = [0]
        for n in length_per_key:
            self._offsets.append(self._offsets[-1] + n)
        self._index = {k: i for i, k in enumerate(keys)}

    @staticmethod
    def from_tensor_list(keys: list[str], tensors: list[torch.Tensor], key_dim: int = 1,
                         cat_dim: int = 1) -> KeyedTensor:
        """Concatenate ``tensors`` along ``cat_dim``, one named block each."""
        return KeyedTensor(keys, [t.shape[key_dim] for t in tensors],
                           torch.cat(tensors, dim=cat_dim), key_dim)

    def keys(self) -> list[str]:
        return list(self._keys)

    def values(self) -> torch.Tensor:
        return self._values

    def key_dim(self) -> int:
        return self._key_dim

    def length_per_key(self) -> list[int]:
        return list(self._lengths)

    def offset_per_key(self) -> list[int]:
        return list(self._offsets)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._index:
            raise ConfigError("KeyedTensor key", f"one of {self._keys}", key)
        i = self._index[key]
        return self._values.narrow(self._key_dim, self._offsets[i], self._lengths[i])

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {k: self[k] for k in self._keys}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedTensor:
        return KeyedTensor(self._keys, self._lengths,
                           self._values.to(device, non_blocking=non_blocking), self._key_dim)

    def __repr__(self) -> str:
        return f"KeyedTensor(keys={self._keys}, length_per_key={self._lengths})"

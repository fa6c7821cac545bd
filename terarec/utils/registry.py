"""A name -> object registry with helpful errors (used for layers, optimizers, readers, tiers)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from terarec.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps HugeCTR type names (e.g. ``"InnerProduct"``) to implementations.

    Example:
        >>> LAYERS: Registry[type] = Registry("layer type")
        >>> @LAYERS.register("ReLU")
        ... class ReLU: ...
        >>> LAYERS.get("ReLU") is ReLU
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, *aliases)
            return obj

        return deco

    def add(self, name: str, obj: T, *aliases: str) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str, where: str = "") -> str:
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        choices = sorted(self._items)
        close = difflib.get_close_matches(str(name), choices + sorted(self._aliases), n=1)
        hint = f"Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            where or self.kind, f"one of the {self.kind}s {choices}", name, hint=hint
        )

    def get(self, name: str, where: str = "") -> T:
        return self._items[self.canonical(name, where)]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

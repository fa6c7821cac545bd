"""Errors raised by terarec.

Owns the exception hierarchy only. Every user-facing error says *where* (file, line,
layer, field), *what was expected* and *what was received*, so a user can fix the input
without reading terarec's source.
"""

from __future__ import annotations

from typing import Any


class TerarecError(Exception):
    """Base class of every error terarec raises on purpose."""


class ConfigError(TerarecError, ValueError):
    """A configuration value (argument, JSON field, layer wiring) is invalid.

    Args:
        where: what was being read, e.g. ``layers[3] "fc1".fc_param.num_output`` or
            ``CreateSolver(batchsize=...)``.
        expected: a short phrase describing what is allowed.
        received: the offending value (echoed with ``repr``).
    """

    def __init__(self, where: str, expected: str, received: Any = None, *, hint: str = "") -> None:
        self.where = where
        self.expected = expected
        self.received = received
        msg = f"{where}: expected {expected}. Received: {received!r}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class DataError(TerarecError, ValueError):
    """A data file is malformed: names the file, the row or byte offset and the field."""

    def __init__(
        self,
        path: str,
        problem: str,
        *,
        row: int | None = None,
        offset: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path)
        self.row = row
        self.offset = offset
        self.field = field
        loc = [f"file {self.path!r}"]
        if row is not None:
            loc.append(f"row {row}")
        if offset is not None:
            loc.append(f"byte offset {offset}")
        if field is not None:
            loc.append(f"field {field}")
        super().__init__(", ".join(loc) + f": {problem}")


class MissingExtraError(TerarecError, ImportError):
    """An optional dependency is missing; names the pip extra that installs it."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the optional package {package!r}. "
            f"Install it with: pip install 'terarec[{extra}]'"
        )


class CapacityError(TerarecError, RuntimeError):
    """A table or cache ran out of room (more distinct keys than its vocabulary)."""


class TrainingError(TerarecError, RuntimeError):
    """Training cannot continue (e.g. the loss became NaN)."""


class NotSupportedError(TerarecError, NotImplementedError):
    """A HugeCTR feature is recognised but not available in terarec (the message says why)."""

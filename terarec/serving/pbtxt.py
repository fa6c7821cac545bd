"""A parser for the subset of protobuf text format that Triton ``config.pbtxt`` files use.

Owns tokenizing and parsing only (no Triton schema): fields ``name: value``, nested messages
``name { ... }`` / ``name: { ... }`` / ``name < ... >``, lists ``name: [a, b]`` /
``name [ {...}, {...} ]``, repeated fields, ``#`` comments, optional ``,`` / ``;`` separators,
double- or single-quoted strings (adjacent strings concatenate), integers, floats, ``true`` /
``false`` and enum identifiers (``TYPE_FP32``, ``KIND_GPU``). Not supported: ``Any`` expansion
(``[type.googleapis.com/...]``), hex/octal integer literals.

Every error is a :class:`PbtxtError` naming ``file:line`` and what was expected there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from terarec.errors import ConfigError

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\f\v]+) | (?P<nl>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?)
  | (?P<ident>[-]?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]<>:,;])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "?": "?"}
_CLOSE = {"{": "}", "<": ">"}
_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)")


class PbtxtError(ConfigError):
    """A ``config.pbtxt`` (or other text-format file) does not parse or has a wrong value."""

    def __init__(self, path: str | Path, line: int, expected: str, received: Any = None) -> None:
        super().__init__(f"{path}:{line}", expected, received)
        self.path, self.line = str(path), line


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    line: int


@dataclass
class Field:
    """One ``name: value`` occurrence; ``line`` is where its name is."""

    name: str
    value: Value
    line: int


@dataclass
class Message:
    """A parsed message: its fields in file order (repeated names kept, lists flattened)."""

    path: str
    line: int
    fields: list[Field] = field(default_factory=list)

    def all(self, name: str) -> list[Field]:
        """Every occurrence of ``name`` (list syntax and repeated fields alike)."""
        return [f for f in self.fields if f.name == name]

    def one(self, name: str) -> Field | None:
        """The single occurrence of ``name``; an error when it is given more than once."""
        found = self.all(name)
        if len(found) > 1:
            raise PbtxtError(self.path, found[1].line, f"{name!r} at most once "
                             f"(first at line {found[0].line})", name)
        return found[0] if found else None

    def scalar(self, name: str, kind: type, default: Any = None) -> Any:
        """The value of ``name`` as ``kind`` (str, int, float, bool), or ``default``."""
        f = self.one(name)
        if f is None:
            return default
        value = f.value
        ok = (isinstance(value, kind) and not isinstance(value, Message)
              and not (kind is int and isinstance(value, bool)))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise PbtxtError(self.path, f.line, f"{name}: {_KINDS.get(kind, kind.__name__)}",
                             _show(value))
        return value

    def names(self) -> list[str]:
        return list(dict.fromkeys(f.name for f in self.fields))


Value = Union[str, int, float, bool, Message]  # noqa: UP007 - runtime alias


def _show(value: Value) -> Any:
    return f"<message at line {value.line}>" if isinstance(value, Message) else value


def _unescape(body: str, path: str, line: int) -> str:
    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] == "x" and len(esc) > 1:
            return chr(int(esc[1:], 16))
        if esc[0] in "01234567":
            return chr(int(esc, 8))
        if esc in _ESCAPES:
            return _ESCAPES[esc]
        raise PbtxtError(path, line, "a known string escape (\\n \\t \\\\ \\\" \\' \\xHH)",
                         "\\" + esc)

    return _ESCAPE.sub(one, body)


def _tokens(text: str, path: str) -> Iterator[_Tok]:
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PbtxtError(path, line, "a field name, value or one of { } [ ] < > : , ;",
                             text[pos:pos + 20].split("\n")[0])
        kind = m.lastgroup or ""
        if kind == "nl":
            line += 1
        elif kind not in ("ws", "comment"):
            yield _Tok(kind, m.group(0), line)
        pos = m.end()


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.toks = list(_tokens(text, path))
        self.i = 0
        self.last_line = text.rstrip().count("\n") + 1

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise PbtxtError(self.path, self.last_line, "more input", "end of file")
        self.i += 1
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "punct" and tok.text == text

    def expect(self, text: str, what: str) -> _Tok:
        tok = self.peek()
        if not self.at(text):
            raise PbtxtError(self.path, tok.line if tok else self.last_line, what,
                             tok.text if tok else "end of file")
        return self.take()

    def message(self, close: str | None, line: int) -> Message:
        msg = Message(self.path, line)
        while True:
            tok = self.peek()
            if tok is None:
                if close is None:
                    return msg
                raise PbtxtError(self.path, self.last_line,
                                 f"{close!r} closing the message opened at line {line}",
                                 "end of file")
            if close is not None and self.at(close):
                self.take()
                return msg
            if tok.kind != "ident" or tok.text.startswith("-"):
                want = "a field name" + (f" or {close!r}" if close else "")
                raise PbtxtError(self.path, tok.line, want, tok.text)
            self.take()
            self.field(msg, tok)
            if self.at(",") or self.at(";"):
                self.take()

    def field(self, msg: Message, name: _Tok) -> None:
        colon = self.at(":")
        if colon:
            self.take()
        if self.at("{") or self.at("<"):
            opener = self.take()
            msg.fields.append(Field(name.text, self.message(_CLOSE[opener.text], opener.line),
                                    name.line))
        elif self.at("["):
            self.take()
            while not self.at("]"):
                line = self.peek().line if self.peek() else self.last_line
                msg.fields.append(Field(name.text, self.element(name.text), line))
                if not self.at("]"):
                    self.expect(",", f"',' or ']' in the list of {name.text!r}")
            self.take()
        elif colon:
            msg.fields.append(Field(name.text, self.scalar(name.text), name.line))
        else:
            tok = self.peek()
            raise PbtxtError(self.path, tok.line if tok else name.line,
                             f"':' or '{{' after field name {name.text!r}",
                             tok.text if tok else "end of file")

    def element(self, name: str) -> Value:
        if self.at("{") or self.at("<"):
            opener = self.take()
            return self.message(_CLOSE[opener.text], opener.line)
        return self.scalar(name)

    def scalar(self, name: str) -> Value:
        tok = self.take()
        if tok.kind == "string":
            parts = [tok]
            while (nxt := self.peek()) is not None and nxt.kind == "string":
                parts.append(self.take())
            return "".join(_unescape(p.text[1:-1], self.path, p.line) for p in parts)
        if tok.kind == "number":
            text = tok.text.rstrip("fF")
            return float(text) if any(c in text for c in ".eE") else int(text)
        if tok.kind == "ident":
            low = tok.text.lower()
            if low in ("true", "false", "t", "f"):
                return low in ("true", "t")
            if low.lstrip("-") in ("inf", "infinity", "nan"):
                return float(low.replace("infinity", "inf"))
            if not tok.text.startswith("-"):
                return tok.text
        raise PbtxtError(self.path, tok.line, f"a value for {name!r} (string, number, "
                         f"true/false or enum name)", tok.text)


def parse_pbtxt(text: str, path: str | Path = "<string>") -> Message:
    """Parse ``text`` (protobuf text format subset); ``path`` names it in errors."""
    return _Parser(text, str(path)).message(None, 1)


def read_pbtxt(path: str | Path) -> Message:
    """Read and parse a text-format file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "a readable text-format file", str(exc)) from exc
    return parse_pbtxt(text, path)

"""The Triton model configuration (``<repo>/<model>/config.pbtxt``) fields terarec reads.

Owns the mapping of a parsed :mod:`~terarec.serving.pbtxt` message onto a small dataclass:
``name``, ``backend`` / ``platform``, ``max_batch_size``, ``input`` / ``output`` (name,
data_type, dims), ``instance_group`` (count, kind, gpus) and ``parameters`` (``key`` ->
``value.string_value``). Other Triton fields (``dynamic_batching``, ``version_policy``, ...) are
accepted and ignored. For ``backend: "hugectr"`` the tensors must be HugeCTR's: inputs ``DES``,
``CATCOLUMN``, ``ROWINDEX`` and output ``OUTPUT0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from terarec.serving.pbtxt import Message, PbtxtError, read_pbtxt

HUGECTR_INPUTS = {"DES", "CATCOLUMN", "ROWINDEX"}
HUGECTR_OUTPUTS = {"OUTPUT0"}


@dataclass
class TensorConfig:
    """One ``input`` / ``output`` entry."""

    name: str
    data_type: str
    dims: list[int]
    line: int


@dataclass
class InstanceGroup:
    """One ``instance_group`` entry (``gpus`` empty: Triton's "all GPUs")."""

    count: int = 1
    kind: str = "KIND_AUTO"
    gpus: list[int] = field(default_factory=list)


@dataclass
class TritonModelConfig:
    """The parts of a Triton ``config.pbtxt`` terarec uses; ``parameter_lines`` for errors."""

    path: Path
    name: str
    backend: str
    max_batch_size: int
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    instance_groups: list[InstanceGroup]
    parameters: dict[str, str]
    parameter_lines: dict[str, int]

    def error(self, key: str, expected: str, received: object) -> PbtxtError:
        """An error pointing at parameter ``key``'s line (or line 1 when it is absent)."""
        return PbtxtError(self.path, self.parameter_lines.get(key, 1), f"parameters {key!r}: "
                          f"{expected}", received)

    def check_hugectr_tensors(self) -> None:
        """HugeCTR's backend serves exactly DES/CATCOLUMN/ROWINDEX -> OUTPUT0."""
        for tensors, allowed, what in ((self.inputs, HUGECTR_INPUTS, "input"),
                                       (self.outputs, HUGECTR_OUTPUTS, "output")):
            for t in tensors:
                if t.name not in allowed:
                    raise PbtxtError(self.path, t.line, f"an {what} name of the hugectr backend "
                                     f"({', '.join(sorted(allowed))})", t.name)


def _messages(msg: Message, name: str) -> list[tuple[Message, int]]:
    out = []
    for f in msg.all(name):
        if not isinstance(f.value, Message):
            raise PbtxtError(msg.path, f.line, f"{name}: a message {{ ... }}", f.value)
        out.append((f.value, f.line))
    return out


def _ints(msg: Message, name: str) -> list[int]:
    out = []
    for f in msg.all(name):
        if not isinstance(f.value, int) or isinstance(f.value, bool):
            raise PbtxtError(msg.path, f.line, f"{name}: integers", f.value)
        out.append(f.value)
    return out


def _tensor(msg: Message, line: int) -> TensorConfig:
    name = msg.scalar("name", str)
    if name is None:
        raise PbtxtError(msg.path, line, "a 'name' in the tensor entry", None)
    return TensorConfig(name, msg.scalar("data_type", str, "TYPE_INVALID"), _ints(msg, "dims"),
                        line)


def _parameters(msg: Message) -> tuple[dict[str, str], dict[str, int]]:
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for entry, line in _messages(msg, "parameters"):
        key = entry.scalar("key", str)
        if key is None:
            raise PbtxtError(msg.path, line, "a 'key' in the parameters entry", None)
        value = entry.one("value")
        if value is None or not isinstance(value.value, Message):
            raise PbtxtError(msg.path, value.line if value else line,
                             f"parameters {key!r}: value {{ string_value: \"...\" }}",
                             value.value if value else None)
        text = value.value.scalar("string_value", str)
        if text is None:
            raise PbtxtError(msg.path, value.line, f"parameters {key!r}: a string_value", None)
        values[key], lines[key] = text, line
    return values, lines


def model_config_from_message(msg: Message, path: Path) -> TritonModelConfig:
    """The typed view of a parsed ``config.pbtxt``."""
    groups = [InstanceGroup(count=g.scalar("count", int, 1), kind=g.scalar("kind", str,
                                                                            "KIND_AUTO"),
                            gpus=_ints(g, "gpus"))
              for g, _ in _messages(msg, "instance_group")]
    params, lines = _parameters(msg)
    backend = msg.scalar("backend", str) or msg.scalar("platform", str) or ""
    return TritonModelConfig(
        path=path, name=msg.scalar("name", str, ""), backend=backend,
        max_batch_size=msg.scalar("max_batch_size", int, 0),
        inputs=[_tensor(m, line) for m, line in _messages(msg, "input")],
        outputs=[_tensor(m, line) for m, line in _messages(msg, "output")],
        instance_groups=groups, parameters=params, parameter_lines=lines)


def read_model_config(path: str | Path) -> TritonModelConfig:
    """Read ``config.pbtxt`` at ``path``."""
    path = Path(path)
    return model_config_from_message(read_pbtxt(path), path)

"""``TorchLayer``: any ``torch.nn.Module`` as a dense layer of a HugeCTR-style graph (terarec extension).

Params (what ``terarec.TorchLayer`` and the graph JSON give):

* ``module``: an ``nn.Module`` instance (used as is), an ``nn.Module`` subclass, or its import
  path ``"package.module:ClassName"`` (``"package.module.ClassName"`` is accepted too);
* ``init_kwargs``: keyword arguments that build the class (``None`` for an instance whose
  construction is unknown: such a layer cannot be written to the graph JSON).

A class is built under a torch RNG seeded from the model's generator, so a model built from
Python and the same model read from its graph JSON start from the same weights.

Output shapes come from one forward pass on dummy float32 inputs (batch 2, the module in eval
mode, no grad, the RNG and the buffers restored afterwards). Every top keeps the batch as its
first dimension; a single 0-dim top makes the layer a loss: its bottoms are (logits, label),
the predictions users see are ``module.predict(logits)`` when the module defines it, else
``sigmoid(logits)``.

Files: the trainable tensors are ``module.named_parameters()`` in that order (the
``_dense_N.model`` slice of this layer); the persistent buffers (``state_dict`` buffers, e.g.
BatchNorm running statistics) are this layer's entry of the ``.ntp.json`` file, by name.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from terarec.errors import ConfigError
from terarec.layers.base import LAYERS, Layer, Shape

TYPE_NAME = "TorchLayer"
DUMMY_BATCH = 2
_RESERVED_NTP_KEYS = ("type", "top")


# ------------------------------------------------------------------------ import paths
def import_module_class(path: str, where: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass named by ``"package.module:ClassName"``; errors name ``path``."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}.module", '"package.module:ClassName"', path)
    mod_name, sep, qualname = path.partition(":")
    if not sep:
        mod_name, _, qualname = path.rpartition(".")
    if not mod_name or not qualname:
        raise ConfigError(f"{where}.module", '"package.module:ClassName"', path)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"{where}.module", f"an importable Python module {mod_name!r}", path,
                          hint=f"Importing it failed ({type(exc).__name__}: {exc}); install "
                               "the package that defines the layer or put it on PYTHONPATH"
                          ) from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}.module", f"a class {qualname!r} in module {mod_name!r}",
                              path) from None
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(f"{where}.module", "a torch.nn.Module subclass", path)
    return obj


def class_path(cls: type) -> str | None:
    """``"package.module:ClassName"`` when that path imports back to ``cls``, else None."""
    mod, qualname = getattr(cls, "__module__", ""), getattr(cls, "__qualname__", "")
    if not mod or mod == "__main__" or "<locals>" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(mod)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{mod}:{qualname}" if obj is cls else None


def check_init_kwargs(init_kwargs: Any, where: str) -> dict[str, Any] | None:
    """``None`` or a dict with string keys (a ConfigError naming ``where`` otherwise)."""
    if init_kwargs is None:
        return None
    if not isinstance(init_kwargs, dict) or not all(isinstance(k, str) for k in init_kwargs):
        raise ConfigError(f"{where}.init_kwargs", "a dict of keyword arguments (str keys)",
                          init_kwargs)
    return dict(init_kwargs)


def resolve_module(module: Any, init_kwargs: dict[str, Any] | None, where: str,
                   generator: torch.Generator | None = None) -> nn.Module:
    """The module a TorchLayer runs: the instance itself, or the class built with init_kwargs."""
    if isinstance(module, nn.Module):
        return module
    if isinstance(module, str):
        module = import_module_class(module, where)
    if not (isinstance(module, type) and issubclass(module, nn.Module)):
        raise ConfigError(f"{where}.module", 'an nn.Module instance, an nn.Module subclass or '
                          '"package.module:ClassName"', module)
    kwargs = init_kwargs or {}
    with _seeded(generator):
        try:
            return module(**kwargs)
        except Exception as exc:  # the user's constructor: report it with the layer's name
            raise ConfigError(f"{where}: {module.__qualname__}(**init_kwargs)",
                              "init_kwargs the class accepts", kwargs,
                              hint=f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None) -> Iterator[None]:
    """Seed the global CPU RNG from ``generator`` inside, restore it after (no-op if None)."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------ the layer
@LAYERS.register(TYPE_NAME)
class TorchModuleLayer(Layer):
    """A user ``nn.Module`` wired by tensor names (see module docstring).

    JSON: ``"module": "package.module:ClassName"``, ``"init_kwargs": {...}``.
    """

    type_name = TYPE_NAME
    num_inputs = (1, None)
    num_outputs = (1, None)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        where = f"{TYPE_NAME} layer {self.layer_name!r}"
        if "module" not in params:
            self.fail("module", "an nn.Module, its class or its import path", None)
        init_kwargs = check_init_kwargs(params.get("init_kwargs"), where)
        self.module = resolve_module(params["module"], init_kwargs, where, self.generator)
        self._shapes = self._probe_output_shapes(where)
        if self._shapes == [()]:
            if len(self.input_shapes) != 2:
                self.fail("bottom_names", "2 tensors (logits, label): a single 0-dim output "
                          "makes a TorchLayer a loss", len(self.input_shapes))
            self.is_loss = True  # per instance: a TorchLayer is a loss only by its output

    def _probe_output_shapes(self, where: str) -> list[Shape]:
        """Run the module once on dummy inputs; map the dummy batch back to the build batch."""
        device = next((t.device for t in [*self.module.parameters(), *self.module.buffers()]),
                      torch.device("cpu"))
        gen = torch.Generator().manual_seed(0)  # the global RNG stays untouched
        dummies = [torch.randn(DUMMY_BATCH, *s[1:], generator=gen).to(device)
                   for s in self.input_shapes]
        modes = [(m, m.training) for m in self.module.modules()]
        saved = [b.detach().clone() for b in self.module.buffers()]
        rng = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=rng), torch.no_grad():
                self.module.eval()
                outs = self._as_tuple(self.module(*dummies), where)
        except ConfigError:
            raise
        except Exception as exc:  # any failure of the user's forward
            raise ConfigError(
                f"{where}: running {type(self.module).__qualname__} on dummy inputs of shapes "
                f"{[tuple(d.shape) for d in dummies]} (batch {DUMMY_BATCH}, float32)",
                "a module whose forward accepts the bottom tensors", f"{type(exc).__name__}: "
                f"{exc}") from exc
        finally:
            for m, mode in modes:
                m.training = mode
            with torch.no_grad():
                for b, s in zip(self.module.buffers(), saved):
                    b.copy_(s)
        batch = self.input_shapes[0][0] if self.input_shapes and self.input_shapes[0] else 1
        shapes: list[Shape] = []
        for i, out in enumerate(outs):
            if out.dim() == 0 and len(outs) == 1:
                shapes.append(())
            elif out.dim() == 0 or out.shape[0] != DUMMY_BATCH:
                self.fail(f"output {i}", f"a tensor with the batch ({DUMMY_BATCH} for the dummy "
                          "inputs) as first dimension, or a single 0-dim loss",
                          tuple(out.shape))
            else:
                shapes.append((batch, *(int(d) for d in out.shape[1:])))
        return shapes

    def _as_tuple(self, result: Any, where: str) -> tuple[torch.Tensor, ...]:
        if isinstance(result, torch.Tensor):
            return (result,)
        if isinstance(result, (tuple, list)) and result and all(
                isinstance(t, torch.Tensor) for t in result):
            return tuple(result)
        raise ConfigError(f"{where}: forward's result", "a tensor or a tuple of tensors "
                          "(one per top name)", type(result).__name__)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        result = self.module(*xs)
        if isinstance(result, torch.Tensor):
            return result
        return self._as_tuple(result, f"{TYPE_NAME} layer {self.layer_name!r}")

    def output_shapes(self) -> list[Shape]:
        return list(self._shapes)

    # -- weights and files ------------------------------------------------------------
    def dense_weights(self) -> list[torch.Tensor]:
        """Every parameter of the module, in ``named_parameters()`` order."""
        return [p for _, p in self.module.named_parameters()]

    def _persistent_buffers(self) -> dict[str, torch.Tensor]:
        state = set(self.module.state_dict(keep_vars=True))
        return {n: b for n, b in self.module.named_buffers() if n in state and b is not None}

    def non_trainable(self) -> dict[str, list[float]]:
        """The module's persistent buffers, flattened, by name (the ``.ntp.json`` entry)."""
        out = {}
        for name, buf in self._persistent_buffers().items():
            if name in _RESERVED_NTP_KEYS:
                self.fail(f"buffer {name!r}", "a buffer name other than 'type' and 'top'", name)
            out[name] = buf.detach().reshape(-1).cpu().tolist()
        return out

    def load_non_trainable(self, state: dict[str, list[float]]) -> None:
        buffers = self._persistent_buffers()
        unknown = sorted(set(state) - set(buffers))
        if unknown:
            self.fail("non-trainable state", f"buffers among {sorted(buffers)}", unknown)
        with torch.no_grad():
            for name, values in state.items():
                buf = buffers[name]
                if len(values) != buf.numel():
                    self.fail(f"buffer {name!r}", f"{buf.numel()} values", len(values))
                buf.copy_(torch.tensor(values, dtype=buf.dtype).reshape(buf.shape))

    # -- as a loss ----------------------------------------------------------------------
    def regularizer_term(self, weights: list[torch.Tensor], batch_size: int) -> torch.Tensor:
        """A custom loss carries no §5.3 regularizer (put one in the module's forward)."""
        return weights[0].new_zeros(()) if weights else torch.zeros(())

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities of a loss TorchLayer: ``module.predict(logits)`` or the sigmoid."""
        predict = getattr(self.module, "predict", None)
        return predict(logits) if callable(predict) else torch.sigmoid(logits)

    # -- JSON -----------------------------------------------------------------------------
    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        module = params.get("module")
        init_kwargs = params.get("init_kwargs")
        if isinstance(module, str):
            import_module_class(module, TYPE_NAME)
            path: str | None = module
        else:
            klass = type(module) if isinstance(module, nn.Module) else module
            path = class_path(klass) if isinstance(klass, type) else None
            if path is None:
                raise ConfigError(f"{TYPE_NAME}.module", "a class importable as "
                                  '"package.module:ClassName" (not defined in __main__ or '
                                  "inside a function)", getattr(klass, "__qualname__", klass),
                                  hint="Move the class to an importable module")
        if init_kwargs is None and isinstance(module, nn.Module):
            raise ConfigError(f"{TYPE_NAME}.init_kwargs", "the keyword arguments that rebuild "
                              "the module instance (init_kwargs={} if none)", None,
                              hint=f"Pass TorchLayer({type(module).__qualname__}(...), bottom, "
                                   "top, init_kwargs={...}) or the class with init_kwargs")
        kwargs = dict(init_kwargs or {})
        try:
            json.dumps(kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{TYPE_NAME}.init_kwargs", "JSON-serialisable values (numbers, "
                              "strings, booleans, None, lists, dicts)", kwargs,
                              hint=str(exc)) from None
        return {"module": path, "init_kwargs": kwargs}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        if "module" not in entry:
            raise ConfigError(f"{where}.module", '"package.module:ClassName"', None)
        path = entry["module"]
        import_module_class(path, where)  # a missing module is reported when the JSON is read
        init_kwargs = check_init_kwargs(entry.get("init_kwargs", {}), where)
        return {"module": path, "init_kwargs": init_kwargs or {}}

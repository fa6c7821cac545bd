"""``hugectr.TorchLayer``: a custom ``torch.nn.Module`` in a HugeCTR-style model (terarec extension).

HugeCTR's ``DenseLayer`` only takes ``Layer_t`` types (HugeCTR#18 asked for custom layers).
terarec's dense network is plain PyTorch, so any module can sit in the graph::

    model.add(hugectr.TorchLayer(GatedMix, ["flat", "dense"], ["h", "g"],
                                 init_kwargs={"emb_dim": 24, "dense_dim": 4, "hidden": 8}))
    model.add(hugectr.DenseLayer(hugectr.Layer_t.Concat, ["h", "g"], ["c"]))

* Its inputs are named tensors (the dense input, embedding outputs, other layers' tops); its
  outputs the ``top_names`` (a module returning a tuple gives one top per element). Output
  shapes are found at ``compile`` by one forward pass on small dummy inputs (batch 2, CPU or the
  module's device); a failure there is a ConfigError naming the layer.
* Its parameters are dense parameters like any layer's: the model's dense optimizer, learning
  rate schedule, bf16 autocast (mixed precision on GPU) and the data-parallel gradient
  all-reduce apply to them. On a GPU with ``use_cuda_graph`` (the default) the training step
  is captured in a CUDA graph and replayed: the module must be capture-safe for that fast path
  (no host syncs such as ``.item()``, no data-dependent shapes or Python branches on tensor
  values, no new CPU tensors). A capture that raises falls back to eager steps with a warning;
  a module that captures but is not replay-safe (e.g. branches on tensor values) needs
  ``CreateSolver(use_cuda_graph=False)``.
* A module whose single output is a 0-dim tensor is a custom loss: ``bottom_names`` are
  ``[logits, label]`` (as ``BinaryCrossEntropyLoss``), predictions are ``module.predict(logits)``
  if defined, else ``sigmoid(logits)``; it carries no HugeCTR regularizer.
* Files: ``save_params_to_files`` writes ``module.named_parameters()`` (float32, flattened, in
  that order) at the layer's position in the ``_dense_N.model`` file, and the module's
  persistent buffers in ``_dense_N.model.ntp.json``.
* ``graph_to_json`` writes ``{"type": "TorchLayer", "module": "package.module:ClassName",
  "init_kwargs": {...}, "bottom": [...], "top": [...]}``; the class must be importable by that
  path (not defined in ``__main__`` or a function) and ``init_kwargs`` JSON-serialisable. A
  module instance needs ``init_kwargs`` too (the arguments that rebuild it). Reading the JSON
  (``construct_from_json``, ``Session``, inference sessions) imports and builds the class.

A class (or import path) is built at ``compile`` under an RNG seeded from the solver's seed; an
instance is used as is (the model trains that object; in a data-parallel job every rank must
build it with the same weights, e.g. after ``torch.manual_seed``). The built module is
``model.engine.network.layers[i].module``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from terarec.errors import ConfigError
from terarec.graph.spec import LayerSpec
from terarec.layers.torch_module import TYPE_NAME, check_init_kwargs, import_module_class


def _names(value: Any, arg: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(
            isinstance(n, str) and n for n in names):
        raise ConfigError(f"TorchLayer.{arg}", "a non-empty list of tensor names", value)
    return list(names)


class TorchLayer:
    """``hugectr.TorchLayer(module, bottom_names, top_names, init_kwargs=None)``.

    Args:
        module: an ``nn.Module`` instance, an ``nn.Module`` subclass, or its import path
            ``"package.module:ClassName"``.
        bottom_names: input tensor names, passed to ``forward`` positionally in this order.
        top_names: output tensor names (one per element of a tuple result).
        init_kwargs: keyword arguments for the class; for an instance, the arguments that
            rebuild it (needed only by ``graph_to_json``).
    """

    def __init__(self, module: nn.Module | type[nn.Module] | str, bottom_names: list[str] | str,
                 top_names: list[str] | str, init_kwargs: dict[str, Any] | None = None) -> None:
        self.bottom_names = _names(bottom_names, "bottom_names")
        self.top_names = _names(top_names, "top_names")
        where = f"TorchLayer(top {self.top_names})"
        self.init_kwargs = check_init_kwargs(init_kwargs, where)
        if isinstance(module, str):
            import_module_class(module, where)  # a wrong path fails here, not at compile
        elif not isinstance(module, nn.Module) and not (
                isinstance(module, type) and issubclass(module, nn.Module)):
            raise ConfigError(f"{where}.module", 'an nn.Module instance, an nn.Module subclass '
                              'or "package.module:ClassName"', module)
        self.module = module

    def to_spec(self) -> LayerSpec:
        return LayerSpec(type=TYPE_NAME, bottom=list(self.bottom_names), top=list(self.top_names),
                         params={"module": self.module, "init_kwargs": self.init_kwargs})

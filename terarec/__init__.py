"""terarec: train and serve recommendation models with huge embedding tables, on PyTorch.

``import terarec as hugectr`` runs HugeCTR Python scripts unchanged: every public HugeCTR
name (``CreateSolver``, ``DataReaderParams``, ``Model``, ``Layer_t`` ...) is exported here,
and the sub-modules ``hugectr.tools``, ``hugectr.data``, ``hugectr.inference`` exist too.
"""

from __future__ import annotations

from terarec.compat.embedding_collection import EmbeddingCollectionConfig, EmbeddingTableConfig
from terarec.compat.etc import (
    CreateETC,
    CreateHMemCache,
    EmbeddingTrainingCache,
    EmbeddingTrainingCacheParams,
    HMemCacheConfig,
)
from terarec.compat.layers import (
    DenseLayer,
    DenseLayerComputeConfig,
    GroupDenseLayer,
    HybridEmbeddingParam,
    Input,
    SparseEmbedding,
)
from terarec.compat.model import Model
from terarec.compat.optimizer import CreateOptimizer, OptParamsPy
from terarec.compat.reader import AsyncParam, DataReaderParams, DataReaderSparseParam
from terarec.compat.session import (
    Session,
    SolverParser,
    get_learning_rate_scheduler,
    solver_parser_helper,
)
from terarec.compat.solver import CreateSolver, Solver
from terarec.compat.torch_layer import TorchLayer
from terarec.data.source_params import DataSourceParams
from terarec.enums import *  # noqa: F403 - HugeCTR exports every enum at top level
from terarec.enums import ALL_ENUMS
from terarec.optim.schedule import LearningRateScheduler
from terarec.training.callbacks import TrainingCallback

__version__ = "0.1.0"

from terarec import optimizer  # noqa: E402, F401 - ``hugectr.optimizer.CreateOptimizer`` (2.3-3.0)

# HugeCTR's pybind enums are export_values()-ed: members are module attributes too
# (``hugectr.Adam``). Names that clash between enums keep the first (as pybind does).
for _enum in ALL_ENUMS.values():
    for _member in _enum:
        globals().setdefault(_member.name, _member)
del _enum, _member

_SUBMODULES = ("inference", "tools", "data", "serving", "distributed", "kernels")


def __getattr__(name: str):  # noqa: ANN202 - module attribute hook
    """``hugectr.inference`` / ``hugectr.tools`` ... as attributes, imported on first use."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"terarec.{name}")
    raise AttributeError(f"module 'terarec' has no attribute {name!r}")


def _alias_as_hugectr() -> None:
    """Let ``from hugectr.inference import X`` work after ``import terarec as hugectr``.

    Only when no real ``hugectr`` package is installed: then ``hugectr`` and its sub-modules
    resolve to terarec's (a ``sys.modules`` alias; nothing is written to disk).
    """
    import importlib.abc
    import importlib.util
    import sys

    if "hugectr" in sys.modules or importlib.util.find_spec("hugectr") is not None:
        return
    sys.modules["hugectr"] = sys.modules[__name__]

    class _HugeCTRAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
            if not fullname.startswith("hugectr."):
                return None
            real = "terarec." + fullname[len("hugectr."):]
            if importlib.util.find_spec(real) is None:
                return None
            return importlib.util.spec_from_loader(fullname, self)

        def create_module(self, spec):  # noqa: ANN001, ANN201 - the terarec module itself
            return importlib.import_module("terarec." + spec.name[len("hugectr."):])

        def exec_module(self, module):  # noqa: ANN001, ANN201 - already executed
            return None

    sys.meta_path.insert(0, _HugeCTRAliasFinder())


_alias_as_hugectr()

__all__ = [
    "AsyncParam", "CreateETC", "CreateHMemCache", "CreateOptimizer", "CreateSolver",
    "DataReaderParams", "DataReaderSparseParam", "DataSourceParams", "DenseLayer",
    "DenseLayerComputeConfig", "EmbeddingCollectionConfig", "EmbeddingTableConfig",
    "EmbeddingTrainingCache", "EmbeddingTrainingCacheParams", "GroupDenseLayer", "HMemCacheConfig",
    "HybridEmbeddingParam", "Input", "LearningRateScheduler", "Model", "OptParamsPy", "Solver",
    "Session", "SolverParser", "SparseEmbedding", "TorchLayer", "TrainingCallback",
    "get_learning_rate_scheduler",
    "solver_parser_helper", "__version__", *ALL_ENUMS,
]

"""terarec: train and serve recommendation models with huge embedding tables, on PyTorch.

``import terarec as hugectr`` runs HugeCTR Python scripts unchanged: every public HugeCTR
name (``CreateSolver``, ``DataReaderParams``, ``Model``, ``Layer_t`` ...) is exported here,
and the sub-modules ``hugectr.tools``, ``hugectr.data``, ``hugectr.inference`` exist too.
"""

from __future__ import annotations

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

__all__ = [
    "AsyncParam", "CreateOptimizer", "CreateSolver", "DataReaderParams", "DataReaderSparseParam",
    "DataSourceParams", "DenseLayer", "DenseLayerComputeConfig", "GroupDenseLayer",
    "HybridEmbeddingParam", "Input", "LearningRateScheduler", "Model", "OptParamsPy", "Solver",
    "Session", "SolverParser", "SparseEmbedding", "TrainingCallback", "get_learning_rate_scheduler",
    "solver_parser_helper", "__version__", *ALL_ENUMS,
]

"""A TorchRec-compatible surface on terarec's tables (``terarec.torchrec``).

For TorchRec users: ``KeyedJaggedTensor`` / ``JaggedTensor`` / ``KeyedTensor``
(:mod:`~terarec.torchrec.jagged`, :mod:`~terarec.torchrec.keyed`), ``EmbeddingBagConfig`` /
``PoolingType`` / ``EmbeddingConfig`` (:mod:`~terarec.torchrec.config`),
``EmbeddingBagCollection`` (:mod:`~terarec.torchrec.embedding_bag`), the unpooled
``EmbeddingCollection`` (:mod:`~terarec.torchrec.embedding_collection`) and ``apply_optimizer_in_backward``
(:mod:`~terarec.torchrec.optim`), ``EmbOptimType`` / ``EmbeddingBagCollectionSharder``
(``fused_params``, :mod:`~terarec.torchrec.fused_params`), the ``fused_optimizer`` state view
(:mod:`~terarec.torchrec.fused_optim`) and ``TrainPipelineSparseDist``
(:mod:`~terarec.torchrec.train_pipeline`). TorchRec itself is never imported.
"""

from terarec.torchrec.config import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from terarec.torchrec.embedding_bag import EmbeddingBagCollection, EmbeddingBagTable
from terarec.torchrec.embedding_collection import EmbeddingCollection
from terarec.torchrec.fused_optim import FusedOptimizer
from terarec.torchrec.fused_params import (
    EmbeddingBagCollectionSharder,
    EmbOptimType,
    fused_params_to_optimizer,
)
from terarec.torchrec.jagged import JaggedTensor, KeyedJaggedTensor
from terarec.torchrec.keyed import KeyedTensor
from terarec.torchrec.layout import IdOutOfRangeError
from terarec.torchrec.optim import (
    apply_optimizer_in_backward,
    in_backward_optimizer_filter,
    sparse_optimizer_config,
)
from terarec.torchrec.train_pipeline import TrainPipelineSparseDist

__all__ = [
    "EmbOptimType", "EmbeddingBagCollection", "EmbeddingBagCollectionSharder",
    "EmbeddingBagConfig", "EmbeddingBagTable", "EmbeddingCollection", "EmbeddingConfig",
    "FusedOptimizer", "IdOutOfRangeError",
    "JaggedTensor", "KeyedJaggedTensor", "KeyedTensor", "PoolingType", "TrainPipelineSparseDist",
    "apply_optimizer_in_backward", "fused_params_to_optimizer", "in_backward_optimizer_filter",
    "sparse_optimizer_config",
]

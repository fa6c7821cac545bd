"""A TorchRec-compatible surface on terarec's tables (``terarec.torchrec``).

For TorchRec users: ``KeyedJaggedTensor`` / ``JaggedTensor`` / ``KeyedTensor``
(:mod:`~terarec.torchrec.jagged`, :mod:`~terarec.torchrec.keyed`), ``EmbeddingBagConfig`` /
``PoolingType`` (:mod:`~terarec.torchrec.config`), ``EmbeddingBagCollection``
(:mod:`~terarec.torchrec.embedding_bag`) and ``apply_optimizer_in_backward``
(:mod:`~terarec.torchrec.optim`). TorchRec itself is never imported.
"""

from terarec.torchrec.config import EmbeddingBagConfig, PoolingType
from terarec.torchrec.embedding_bag import EmbeddingBagCollection, EmbeddingBagTable
from terarec.torchrec.jagged import JaggedTensor, KeyedJaggedTensor
from terarec.torchrec.keyed import KeyedTensor
from terarec.torchrec.layout import IdOutOfRangeError
from terarec.torchrec.optim import (
    apply_optimizer_in_backward,
    in_backward_optimizer_filter,
    sparse_optimizer_config,
)

__all__ = [
    "EmbeddingBagCollection", "EmbeddingBagConfig", "EmbeddingBagTable", "IdOutOfRangeError",
    "JaggedTensor", "KeyedJaggedTensor", "KeyedTensor", "PoolingType",
    "apply_optimizer_in_backward", "in_backward_optimizer_filter", "sparse_optimizer_config",
]

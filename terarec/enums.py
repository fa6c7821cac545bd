"""HugeCTR's enums with their exact Python member names (``Layer_t.InnerProduct``, ``Check_t.Non``).

The core of terarec works with plain type-name strings (the registries are keyed by them);
:func:`name_of` turns an enum member or a string into that name. Every enum here is also
re-exported at the top level of ``terarec`` exactly as ``hugectr`` exports it.
"""

from __future__ import annotations

import enum
from typing import Any


class _HugeCTREnum(enum.Enum):
    """Enum whose value is its HugeCTR name; ``str(member)`` prints ``Type.Member``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _make(name: str, members: list[str]) -> type[_HugeCTREnum]:
    return _HugeCTREnum(name, [(m, m) for m in members])  # type: ignore[return-value]


Error_t = _make("Error_t", [
    "Success", "FileCannotOpen", "BrokenFile", "OutOfMemory", "OutOfBound", "WrongInput",
    "IllegalCall", "NotInitialized", "UnSupportedFormat", "InvalidEnv", "MpiError",
    "CublasError", "CudnnError", "CudaDriverError", "CudaRuntimeError", "NcclError",
    "DataCheckError", "UnspecificError", "EndOfFile",
])
Check_t = _make("Check_t", ["Sum", "Non"])
DataReaderType_t = _make("DataReaderType_t", ["Norm", "Raw", "Parquet", "RawAsync"])
DataReaderSparse_t = _make("DataReaderSparse_t", ["Distributed", "Localized"])
FileSystemType_t = _make("FileSystemType_t", ["Local", "HDFS", "S3", "GCS", "Other"])
SourceType_t = _make("SourceType_t", ["FileList", "Mmap", "Parquet"])
TrainPSType_t = _make("TrainPSType_t", ["Staged", "Cached"])
Embedding_t = _make("Embedding_t", [
    "DistributedSlotSparseEmbeddingHash", "LocalizedSlotSparseEmbeddingHash",
    "LocalizedSlotSparseEmbeddingOneHot", "HybridSparseEmbedding",
])
Initializer_t = _make("Initializer_t", ["Default", "Uniform", "XavierNorm", "XavierUniform", "Zero"])
Layer_t = _make("Layer_t", [
    "BatchNorm", "LayerNorm", "BinaryCrossEntropyLoss", "Reshape", "Select", "Concat",
    "CrossEntropyLoss", "Dropout", "ElementwiseMultiply", "ELU", "InnerProduct",
    "FusedInnerProduct", "MLP", "Interaction", "MultiCrossEntropyLoss", "ReLU", "ReLUHalf",
    "Sigmoid", "Slice", "WeightMultiply", "FmOrder2", "Add", "ReduceSum", "Softmax", "Gather",
    "PReLU_Dice", "GRU", "MatrixMultiply", "MultiHeadAttention", "Scale", "FusedReshapeConcat",
    "FusedReshapeConcatGeneral", "Sub", "ReduceMean", "MultiCross", "Cast", "SequenceMask",
    "DotProduct", "Multiply",
])
GroupLayer_t = _make("GroupLayer_t", ["GroupFusedInnerProduct"])
Alignment_t = _make("Alignment_t", ["Auto", "Non"])
LrPolicy_t = _make("LrPolicy_t", ["fixed"])
Optimizer_t = _make("Optimizer_t", [
    "Ftrl", "Adam", "RMSProp", "AdaGrad", "MomentumSGD", "Nesterov", "SGD",
])
Update_t = _make("Update_t", ["Local", "Global", "LazyGlobal"])
Activation_t = _make("Activation_t", ["Relu", "Non"])
FcPosition_t = _make("FcPosition_t", ["Non", "Head", "Body", "Tail", "Isolated"])
Regularizer_t = _make("Regularizer_t", ["L1", "L2"])
MetricsType = _make("MetricsType", ["AUC", "AverageLoss", "HitRate", "NDCG", "SMAPE"])
MetricsRawType = _make("MetricsRawType", ["Loss", "Pred", "Label"])
DeviceLayout = _make("DeviceLayout", ["LocalFirst", "NodeFirst"])
AllReduceAlgo = _make("AllReduceAlgo", ["OneShot", "NCCL"])
Distribution_t = _make("Distribution_t", ["Uniform", "PowerLaw"])
PowerLaw_t = _make("PowerLaw_t", ["Long", "Medium", "Short", "Specific"])
Tensor_t = _make("Tensor_t", ["Train", "Evaluate"])
HybridEmbeddingType = _make("HybridEmbeddingType", ["Distributed"])
CommunicationType = _make("CommunicationType", ["IB_NVLink_Hier", "IB_NVLink", "NVLink_SingleNode"])
CommunicationStrategy = _make("CommunicationStrategy", ["Uniform", "Hierarchical"])
CompressionStrategy = _make("CompressionStrategy", ["Reduction", "Unique"])
DatabaseType_t = _make("DatabaseType_t", [
    "disabled", "hash_map", "parallel_hash_map", "multi_process_hash_map", "redis_cluster",
    "rocks_db",
])
DatabaseOverflowPolicy_t = _make(
    "DatabaseOverflowPolicy_t", ["evict_random", "evict_least_used", "evict_oldest"]
)
UpdateSourceType_t = _make("UpdateSourceType_t", ["null", "kafka_message_queue"])
EmbeddingCacheType_t = _make("EmbeddingCacheType_t", ["Dynamic", "UVM", "Static", "stochastic"])

ALL_ENUMS: dict[str, type[_HugeCTREnum]] = {
    cls.__name__: cls
    for cls in [
        Error_t, Check_t, DataReaderType_t, DataReaderSparse_t, FileSystemType_t, SourceType_t,
        TrainPSType_t, Embedding_t, Initializer_t, Layer_t, GroupLayer_t, Alignment_t,
        LrPolicy_t, Optimizer_t, Update_t, Activation_t, FcPosition_t, Regularizer_t,
        MetricsType, MetricsRawType, DeviceLayout, AllReduceAlgo, Distribution_t, PowerLaw_t,
        Tensor_t, HybridEmbeddingType, CommunicationType, CommunicationStrategy,
        CompressionStrategy, DatabaseType_t, DatabaseOverflowPolicy_t, UpdateSourceType_t,
        EmbeddingCacheType_t,
    ]
}

# Layer type names that older HugeCTR versions used (renamed in v3.0).
LAYER_ALIASES = {"DotProduct": "ElementwiseMultiply", "Multiply": "WeightMultiply"}


def name_of(value: Any) -> str:
    """``Layer_t.InnerProduct`` -> ``"InnerProduct"``; strings pass through unchanged."""
    if isinstance(value, enum.Enum):
        return str(value.name)
    return str(value)


def coerce(enum_cls: type[_HugeCTREnum], value: Any, where: str) -> _HugeCTREnum:
    """Accept an enum member or its name (HugeCTR JSON spelling) and return the member."""
    from terarec.errors import ConfigError

    if isinstance(value, enum_cls):
        return value
    if isinstance(value, enum.Enum):
        value = value.name
    if isinstance(value, str):
        for member in enum_cls:
            if member.name == value or member.name.lower() == value.lower():
                return member
    raise ConfigError(where, f"one of {[m.name for m in enum_cls]}", value)

__all__ = list(ALL_ENUMS)

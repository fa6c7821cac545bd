"""One small, valid configuration per layer type, shared by the generic layer tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Case:
    type_name: str
    params: dict[str, Any]
    shapes: list[tuple[int, ...]]
    # per input: "x" random normal, "label01" 0/1, "lenF"/"lenT" lengths, "mask" 0/1
    kinds: list[str] = field(default_factory=list)
    fixed_batch: bool = False  # input shapes do not scale with the batch
    n_tops: int = 1

    def inputs(self, batch: int | None = None, dtype: torch.dtype = torch.float64,
               seed: int = 0) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for i, shape in enumerate(self.shapes):
            s = list(shape)
            if batch is not None and not self.fixed_batch:
                s[0] = batch
            kind = self.kinds[i] if i < len(self.kinds) else "x"
            if kind == "label01":
                t = torch.randint(0, 2, s, generator=g).to(dtype)
            elif kind == "len":
                t = torch.randint(1, 5, s, generator=g).to(dtype)
            elif kind == "mask":
                t = torch.randint(0, 2, s, generator=g).to(dtype)
                t[..., 0] = 1
            else:
                t = torch.randn(s, generator=g, dtype=dtype)
            out.append(t)
        return out


CASES: list[Case] = [
    Case("InnerProduct", {"num_output": 3}, [(4, 5)]),
    Case("InnerProduct", {"num_output": 2, "weight_init_type": "XavierUniform"}, [(4, 3, 5)]),
    Case("FusedInnerProduct", {"num_output": 3}, [(4, 5)]),
    Case("MLP", {"num_outputs": [4, 2], "activations": ["Relu", "Non"],
                 "biases": [True, False]}, [(4, 5)]),
    Case("ReLU", {}, [(4, 5)]),
    Case("ReLUHalf", {}, [(4, 5)]),
    Case("Sigmoid", {}, [(4, 5)]),
    Case("ELU", {"elu_alpha": 0.7}, [(4, 5)]),
    Case("Dropout", {"dropout_rate": 0.3}, [(4, 5)]),
    Case("BatchNorm", {"factor": 0.5, "eps": 1e-4}, [(6, 5)]),
    Case("LayerNorm", {"eps": 1e-4}, [(4, 3, 5)]),
    Case("Concat", {}, [(4, 2), (4, 3)]),
    Case("Concat", {"axis": 2}, [(4, 3, 2), (4, 3, 4)]),
    Case("Reshape", {"leading_dim": 12}, [(4, 3, 4)]),
    Case("Reshape", {"leading_dim": 4, "time_step": 3}, [(4, 12)]),
    Case("Reshape", {"selected": True, "selected_slots": [2, 0]}, [(4, 3, 2)]),
    Case("Reshape", {"shape": [-1, 2]}, [(4, 3, 2)]),
    Case("Select", {"dim": 1, "index": [2, 0]}, [(4, 3, 2)]),
    Case("Slice", {"ranges": [(0, 2), (1, 5)]}, [(4, 5)], n_tops=2),
    Case("WeightMultiply", {"weight_dims": [3, 2]}, [(4, 3)]),
    Case("ElementwiseMultiply", {}, [(4, 3), (4, 3), (4, 3)]),
    Case("Add", {}, [(4, 3), (4, 3)]),
    Case("Sub", {}, [(4, 3), (4, 3)]),
    Case("ReduceSum", {"axis": 1}, [(4, 3, 2)]),
    Case("ReduceMean", {"axis": 2}, [(4, 3, 2)]),
    Case("FmOrder2", {"out_dim": 2}, [(4, 6)]),
    Case("Interaction", {}, [(4, 3), (4, 2, 3)]),
    Case("MultiCross", {"num_layers": 2}, [(4, 5)]),
    Case("MultiCross", {"num_layers": 2, "projection_dim": 2}, [(4, 5)]),
    Case("Softmax", {}, [(4, 5)]),
    Case("Softmax", {"factor": 0.5}, [(4, 2, 3, 3), (4, 1, 1, 3)], ["x", "mask"]),
    Case("Scale", {"axis": 0, "factor": 2}, [(4, 3)]),
    Case("Scale", {"axis": 1, "factor": 3}, [(4, 3)]),
    Case("PReLU_Dice", {"elu_alpha": 0.2, "eps": 1e-3}, [(6, 3)]),
    Case("FusedReshapeConcat", {}, [(4, 3, 2), (4, 3, 1)], n_tops=2),
    Case("FusedReshapeConcatGeneral", {}, [(4, 3, 2), (4, 3, 1)]),
    Case("Gather", {"indices": [2, 0]}, [(4, 3)], fixed_batch=True),
    Case("GRU", {"num_output": 3, "batchsize": 2, "SeqLength": 3, "vector_size": 2},
         [(2, 6)], fixed_batch=True),
    Case("MatrixMultiply", {}, [(4, 2, 3), (4, 3, 2)]),
    Case("MultiHeadAttention", {"num_attention_heads": 2}, [(4, 3, 4), (4, 2, 4), (4, 2, 4)]),
    Case("MultiHeadAttention", {"num_attention_heads": 2},
         [(4, 3, 4), (4, 2, 4), (4, 2, 4), (4, 1, 3, 2)], ["x", "x", "x", "mask"]),
    Case("SequenceMask", {"max_sequence_len_from": 3, "max_sequence_len_to": 4},
         [(4, 1), (4, 1)], ["len", "len"]),
    Case("Cast", {}, [(4, 3)]),
    Case("TorchLayer", {"module": "torch.nn:Bilinear",  # any nn.Module (terarec extension)
                        "init_kwargs": {"in1_features": 5, "in2_features": 3, "out_features": 2}},
         [(4, 5), (4, 3)]),
    Case("BinaryCrossEntropyLoss", {"use_regularizer": True, "regularizer_type": "L2",
                                    "lambda": 0.1}, [(4, 1), (4, 1)], ["x", "label01"]),
    Case("CrossEntropyLoss", {}, [(4, 2), (4, 1)], ["x", "label01"]),
    Case("MultiCrossEntropyLoss", {"target_weight_vec": [0.3, 0.7]}, [(4, 2), (4, 2)],
         ["x", "label01"]),
]


def case_id(case: Case) -> str:
    return f"{case.type_name}-{len(case.shapes)}in-{'-'.join(map(str, case.shapes[0]))}"

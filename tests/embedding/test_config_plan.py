"""TableConfig validation, HugeCTR's workspace -> vocabulary rule, plans and the collection."""

from __future__ import annotations

import math

import pytest
import torch

from terarec.embedding import (
    EmbeddingCollection,
    ShardingPlan,
    TableConfig,
    TablePlacement,
    single_device_plan,
    vocabulary_from_workspace,
)
from terarec.errors import ConfigError, NotSupportedError
from terarec.optim.config import OptimizerConfig
from terarec.sparse import SparseInput


@pytest.mark.parametrize(("opt", "update", "k"), [
    ("SGD", "Global", 0), ("MomentumSGD", "Local", 1), ("Nesterov", "Global", 1),
    ("AdaGrad", "Global", 1), ("RMSProp", "Global", 1), ("Adam", "Global", 2),
    ("Ftrl", "Global", 2), ("Adam", "LazyGlobal", 3),
])
def test_vocabulary_from_workspace(opt: str, update: str, k: int) -> None:
    cfg = OptimizerConfig(type=opt, update_type=update)
    for ws, dim in [(75, 16), (1, 128), (8000, 13)]:
        expect = math.floor(ws * 2**20 / ((1 + k) * 4 * dim))
        assert vocabulary_from_workspace(ws, dim, cfg) == expect
        assert vocabulary_from_workspace(ws, dim, cfg, num_gpus=4) == 4 * expect
    # DLRM sample: 75 MB, vec 16, SGD -> 1228800 rows per GPU
    assert vocabulary_from_workspace(75, 16, OptimizerConfig(type="SGD")) == 1_228_800


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"dim": 0}, "embedding_vec_size"), ({"dim": 1025}, "embedding_vec_size"),
    ({"combiner": "max"}, "combiner"), ({"slot_num": 0}, "slot_num"),
    ({"embedding_type": "Foo"}, "embedding_type"),
    ({"slot_size_array": [1, 2, 3]}, "slot_size_array"),
    ({"max_vocabulary_size": 0}, "max_vocabulary_size"),
])
def test_table_config_errors_name_embedding_and_field(kwargs: dict, field: str) -> None:
    args = dict(name="wide", input_name="data", dim=8, slot_num=2, max_vocabulary_size=10)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=f"'wide'.*{field}"):
        TableConfig(**args)


def test_table_config_defaults_and_init_bounds() -> None:
    c = TableConfig("e", "d", dim=4, slot_num=2, slot_size_array=[4, 100],
                    embedding_type="LocalizedSlotSparseEmbeddingHash", combiner="average")
    assert c.max_vocabulary_size == 104 and c.combiner == "mean"
    assert c.slot_init_bounds() == [0.5, 0.1]
    h = TableConfig("e", "d", dim=4, slot_num=2, max_vocabulary_size=9)
    assert h.slot_init_bounds() == [0.05, 0.05]
    assert TableConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="slot_size_array"):
        TableConfig("e", "d", dim=4, max_vocabulary_size=9,
                    embedding_type="LocalizedSlotSparseEmbeddingOneHot")


def test_plan_json_round_trip_and_describe() -> None:
    tables = [TableConfig("a", "d", dim=4, max_vocabulary_size=1000),
              TableConfig("b", "d", dim=8, max_vocabulary_size=10,
                          optimizer=OptimizerConfig(type="SGD"))]
    plan = ShardingPlan({"a": TablePlacement("row_wise", [0, 1], "host"),
                         "b": TablePlacement("replicated", [0, 1])})
    assert ShardingPlan.from_json(plan.to_json()) == plan
    text = plan.describe(tables)
    assert "row_wise" in text and "host" in text and f"{1000 * 4 * 4 * 3 // 2:,}" in text
    assert "a" in single_device_plan(tables).placements
    with pytest.raises(ConfigError):
        TablePlacement("diagonal")
    with pytest.raises(NotSupportedError, match="'a'"):
        EmbeddingCollection(tables, plan)


def test_collection_forward_and_update() -> None:
    tables = [TableConfig("wide", "wide_data", dim=1, slot_num=1, max_vocabulary_size=50,
                          optimizer=OptimizerConfig(type="SGD")),
              TableConfig("deep", "deep_data", dim=4, slot_num=2, max_vocabulary_size=50,
                          combiner="mean")]
    coll = EmbeddingCollection(tables, generator=torch.Generator().manual_seed(0))
    assert "deep" in coll.describe()
    inputs = {"wide_data": SparseInput.from_lists([[[1, 2]], [[3]]]),
              "deep_data": SparseInput.from_lists([[[1], [2, 3]], [[4], []]])}
    coll.set_learning_rate(0.1)
    out = coll(inputs)
    assert out["wide"].shape == (2, 1, 1) and out["deep"].shape == (2, 2, 4)
    before = coll.tables["wide"].export()[1].copy()
    (out["wide"].sum() + out["deep"].sum()).backward()
    assert (coll.tables["wide"].export()[1] == before - 0.1).all()
    assert list(coll.parameters()) == []
    with pytest.raises(ConfigError, match="deep_data"):
        coll({"wide_data": inputs["wide_data"]})

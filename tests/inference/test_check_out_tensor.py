"""``InferenceModel.check_out_tensor(tensor_name)`` (HugeCTR 23.08, reference §18.3).

HugeCTR's own check (``test/inference/.../synthetic_multi_hot.py``): after training, the
embedding outputs checked out of ``Model`` (``Tensor_t.Evaluate``) equal those checked out of an
``InferenceModel`` that predicted the same batch. Here every tensor both sides keep is compared.
"""

from __future__ import annotations

import numpy as np
import pytest

import terarec as hugectr
from terarec.enums import Check_t, DataReaderType_t
from terarec.errors import ConfigError
from terarec.inference import InferenceModel, InferenceParams
from tests.helpers.models import build_dcn
from tests.helpers.synth import raw_async_dataset

BATCH = 128


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[hugectr.Model, InferenceModel,
                                                               dict]:
    """A DCN trained a few steps, saved as HugeCTR files, and an InferenceModel on them."""
    tmp = tmp_path_factory.mktemp("check_out")
    data = raw_async_dataset(tmp, n_train=1024, n_eval=512)
    model = build_dcn(data, batchsize=BATCH)
    model.compile()
    model.fit(max_iter=10, display=1000, eval_interval=1000, snapshot=1000)
    prefix = str(tmp / "dcn")
    model.save_params_to_files(prefix, 10)
    model.graph_to_json(str(tmp / "graph.json"))
    params = InferenceParams(
        model_name="dcn", max_batchsize=BATCH, hit_rate_threshold=1.0,
        dense_model_file=f"{prefix}_dense_10.model",
        sparse_model_files=[f"{prefix}0_sparse_10.model"], device_id=0,
        use_gpu_embedding_cache=True, cache_size_percentage=0.5, i64_input_key=False)
    infer = InferenceModel(str(tmp / "graph.json"), params)
    yield model, infer, data
    infer.close()


def _predict(infer: InferenceModel, data: dict, num_batches: int) -> np.ndarray:
    return infer.predict(num_batches, data["eval"], DataReaderType_t.RawAsync, Check_t.Non,
                         data["slot_sizes"])


def test_before_any_batch_is_a_clear_error(served: tuple) -> None:
    _, infer, data = served
    fresh = InferenceModel(infer.graph_path, infer.params, parameter_server=infer.parameter_server)
    with pytest.raises(ConfigError, match=r"predict\(\.\.\.\) or evaluate\(\.\.\.\)"):
        fresh.check_out_tensor("emb")


def test_tensors_of_the_last_batch_equal_training(served: tuple) -> None:
    model, infer, data = served
    preds = _predict(infer, data, 2)
    model.evaluate(num_batches=2)  # Model's last eval batch: the same (second) batch
    names = ["dense", "label", "emb", "r", "c", "mc", "fc1", "relu1", "c2", "fc2"]
    for name in names:
        got = infer.check_out_tensor(name)
        want = model.check_out_tensor(name, hugectr.Tensor_t.Evaluate)
        assert got.dtype == np.float32, name
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    assert infer.check_out_tensor("emb").shape == (BATCH, len(data["slot_sizes"]), 8)
    # the last layer's logits are the last batch's predictions
    logits = infer.check_out_tensor("fc2")
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), preds[-BATCH:], rtol=1e-5, atol=1e-6)


def test_evaluate_keeps_the_last_batch_too(served: tuple) -> None:
    _, infer, data = served
    first = _predict(infer, data, 1)
    infer.evaluate(3, data["eval"], DataReaderType_t.RawAsync, Check_t.Non, data["slot_sizes"])
    third = _predict(infer, data, 3)[-BATCH:]
    logits = infer.check_out_tensor("fc2")
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), third, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first, third)


def test_csr_predict_keeps_its_batch(served: tuple) -> None:
    model, infer, _ = served
    batch = next(model.eval_reader.iterate_once()).to("cpu")
    sparse = batch.sparse["data1"]
    infer.predict(batch.dense.numpy().reshape(-1), sparse.keys.numpy(), sparse.offsets.numpy())
    np.testing.assert_allclose(infer.check_out_tensor("dense"), batch.dense.numpy())
    assert infer.check_out_tensor("emb").shape[0] == batch.batch_size


def test_unknown_name_lists_the_valid_names(served: tuple) -> None:
    _, infer, data = served
    _predict(infer, data, 1)
    with pytest.raises(ConfigError, match="check_out_tensor") as err:
        infer.check_out_tensor("nope")
    msg = str(err.value)
    assert "'nope'" in msg
    for name in ("dense", "label", "emb", "fc2"):
        assert repr(name) in msg
    assert "'loss'" not in msg  # the loss layer does not run at inference (as in HugeCTR)
    with pytest.raises(ConfigError, match="tensor name"):
        infer.check_out_tensor(3)  # type: ignore[arg-type]

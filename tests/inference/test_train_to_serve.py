"""Train -> save HugeCTR files -> inference session: predictions equal Model.predict (1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from terarec.enums import Check_t, DataReaderType_t
from terarec.inference import CreateInferenceSession, InferenceParams
from tests.helpers.models import BUILDERS
from tests.helpers.synth import raw_async_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("raw"), n_train=2048, n_eval=512)


def _serve(model, tmp_path, name: str, step: int, **params_kw):  # noqa: ANN001, ANN202
    """Save ``model`` as HugeCTR files at ``step`` and open an inference session on them."""
    prefix = str(tmp_path / name)
    model.save_params_to_files(prefix, step)
    model.graph_to_json(str(tmp_path / "graph.json"))
    n_tables = len(model.engine.tables)
    params = InferenceParams(
        model_name=name, max_batchsize=128, hit_rate_threshold=0.9,
        dense_model_file=f"{prefix}_dense_{step}.model",
        sparse_model_files=[f"{prefix}{i}_sparse_{step}.model" for i in range(n_tables)],
        device_id=0, use_gpu_embedding_cache=True, i64_input_key=False, **params_kw)
    return CreateInferenceSession(str(tmp_path / "graph.json"), params)


def _request(model, batch):  # noqa: ANN001, ANN202
    """The CSR request of ``batch``: one CSR per table, concatenated table by table (HugeCTR's
    Triton backend layout)."""
    sparse = batch.sparse["data1"]
    n_tables = len(model.engine.tables)
    keys = np.concatenate([sparse.keys.numpy()] * n_tables)
    row_ptrs = np.concatenate([sparse.offsets.numpy()] * n_tables)
    return batch.dense.numpy().reshape(-1), keys, row_ptrs


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_inference_equals_training_predict(name, data, tmp_path):
    model = BUILDERS[name](data)
    model.compile()
    model.fit(max_iter=30, display=1000, eval_interval=1000, snapshot=1000)
    assert model.evaluate()["AUC"] > 0.6
    session = _serve(model, tmp_path, name, 30, cache_size_percentage=0.5)
    batch = next(model.eval_reader.iterate_once()).to("cpu")  # a server gets host arrays
    expected = model.predict(batch)
    got = np.asarray(session.predict(*_request(model, batch)))
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
    # HugeCTR 23.08's reader-driven overloads read the same files the training used
    from_files = session.predict(2, data["eval"], DataReaderType_t.RawAsync, Check_t.Non,
                                 data["slot_sizes"])
    np.testing.assert_allclose(from_files, model.predict(num_batches=2), rtol=1e-5, atol=1e-6)
    auc = session.evaluate(4, data["eval"], DataReaderType_t.RawAsync, Check_t.Non,
                           data["slot_sizes"])
    assert abs(auc - model.evaluate(num_batches=4)["AUC"]) < 1e-6
    session.close()


@pytest.mark.gpu
def test_mixed_precision_session_close_to_training(data, tmp_path):
    """``use_mixed_precision`` (bf16 autocast on CUDA) stays close to fp32 Model.predict."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = BUILDERS["dlrm"](data)
    model.compile()
    model.fit(max_iter=30, display=1000, eval_interval=1000, snapshot=1000)
    session = _serve(model, tmp_path, "dlrm", 30, cache_size_percentage=1.0,
                     use_mixed_precision=True)
    assert session.core.dense.mixed_precision == "bf16"
    batch = next(model.eval_reader.iterate_once()).to("cpu")
    dense, keys, row_ptrs = _request(model, batch)
    got = np.asarray(session.predict(dense, keys, row_ptrs))
    # every embedding fits the cache: the second, warm call is one host sync
    again = session.core.predict_tensor(torch.from_numpy(dense).cuda(),
                                        torch.from_numpy(keys).cuda(),
                                        torch.from_numpy(row_ptrs).cuda(), False)
    np.testing.assert_allclose(again.cpu().numpy(), got, rtol=0, atol=1e-6)
    expected = model.predict(batch)
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=2e-2)
    session.close()


def test_online_update_from_incremental_model(data, tmp_path):
    """Online training (HugeCTR's ETC + HPS update loop): train, save, serve; train on with the
    dense part frozen; push ``get_incremental_model()``'s rows into the running parameter
    server and refresh its cache: the session then predicts what the model predicts (1e-5),
    which it did not before the push."""
    model = BUILDERS["dcn"](data)
    model.compile()
    model.fit(max_iter=20, display=1000, eval_interval=1000, snapshot=1000)
    session = _serve(model, tmp_path, "online", 20, cache_size_percentage=0.5)
    model.get_incremental_model()  # the state just saved: every row
    model.freeze_dense()
    model.fit(max_iter=15, display=1000, eval_interval=1000, snapshot=1000)
    batch = next(model.eval_reader.iterate_once()).to("cpu")
    request = _request(model, batch)

    def served() -> np.ndarray:
        return np.asarray(session.predict(*request))

    expected = model.predict(batch).reshape(-1)
    assert np.abs(served() - expected).max() > 1e-4  # the served tables are behind
    deltas = model.get_incremental_model()
    assert all(k.size for k, _ in deltas)
    for table_id, (k, v) in enumerate(deltas):
        session.parameter_server.table("online", table_id).insert(k, v)
    session.refresh_embedding_cache()
    np.testing.assert_allclose(served(), expected, rtol=1e-5, atol=1e-6)
    session.close()

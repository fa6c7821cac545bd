"""Epoch mode (repeat_dataset=False): fit(num_epochs), set_source, train() returning False."""

from __future__ import annotations

import pytest

from terarec.errors import ConfigError
from tests.helpers.models import build_dcn
from tests.helpers.synth import raw_async_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("ep"), n_train=1024, n_eval=256)


def test_fit_epochs_counts_iterations(data, capsys):
    model = build_dcn(data, repeat=False, batchsize=128)
    model.compile()
    model.fit(num_epochs=2, display=4, eval_interval=8, snapshot=1000)
    out = capsys.readouterr().out
    assert "Epoch 0" in out and "Epoch 1" in out
    assert "Finish 16 iterations with batchsize: 128 in epoch mode" in out
    assert "Evaluation, AUC:" in out


def test_low_level_epoch_loop_with_set_source(data):
    model = build_dcn(data, repeat=False, batchsize=128)
    model.compile()
    reader = model.get_data_reader_train()
    steps = 0
    for _epoch in range(2):
        reader.set_source(data["train"])
        while model.train():
            steps += 1
    assert steps == 16
    model.set_source(data["train"], data["eval"])
    assert model.train()


def test_epoch_mode_needs_num_epochs(data):
    model = build_dcn(data, repeat=False)
    model.compile()
    with pytest.raises(ConfigError, match="num_epochs"):
        model.fit(max_iter=10)


def test_tensorboard_scalars(data, tmp_path):
    pytest.importorskip("tensorboard")
    model = build_dcn(data)
    model.compile()
    model.fit(max_iter=8, display=4, eval_interval=8, snapshot=1000,
              tensorboard_dir=str(tmp_path / "tb"))
    assert any((tmp_path / "tb").iterdir())

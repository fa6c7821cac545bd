"""The examples (HugeCTR scripts run by terarec) and the README's default job, at smoke size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("name", ["dcn", "wdl", "deepfm", "dlrm"])
def test_example_learns(name, tmp_path):
    out = run([str(ROOT / "examples" / f"{name}.py"), "--data-dir", str(tmp_path / "d"),
               "--samples", "12000", "--batchsize", "256", "--iters", "120"], tmp_path)
    assert "teacher (best reachable) AUC" in out
    auc = float(re.search(r"final AUC: ([0-9.]+)", out).group(1))
    assert auc > 0.6, out[-2000:]
    assert (tmp_path / "d" / f"{name}.json").exists()


def test_default_job(tmp_path):
    out = run(["-m", "terarec", "train", "--out", str(tmp_path / "demo"), "--samples", "16000",
               "--batchsize", "512"], tmp_path)
    auc = float(re.search(r"eval AUC ([0-9.]+)", out).group(1))
    assert auc > 0.6, out[-2000:]


SMOKE = ["--samples", "12000", "--batchsize", "256", "--iters", "120"]


def _diffs(out: str) -> list[float]:
    return [float(d) for d in re.findall(r"max abs diff ([0-9.e+-]+)", out)]


@pytest.mark.parametrize("launch", [[], ["-m", "torch.distributed.run", "--nproc-per-node", "2"]],
                         ids=["1proc", "torchrun2"])
def test_torchrec_dlrm_learns(launch, tmp_path):
    extra = ["--fused-params"] if launch else []  # 2 ranks: the sparse optimizer via fused_params
    out = run([*launch, str(ROOT / "examples" / "torchrec_dlrm.py"), *SMOKE, *extra], tmp_path)
    assert "teacher (best reachable) AUC" in out
    auc = float(re.search(r"final AUC: ([0-9.]+)", out).group(1))
    assert auc > 0.6, out[-2000:]


def test_custom_layer_trains_and_serves(tmp_path):
    out = run([str(ROOT / "examples" / "custom_layer.py"), "--data-dir", str(tmp_path / "d"),
               *SMOKE], tmp_path)
    assert "teacher (best reachable) AUC" in out
    assert float(re.search(r"final AUC: ([0-9.]+)", out).group(1)) > 0.6, out[-2000:]
    diffs = _diffs(out)
    assert len(diffs) == 1 and diffs[0] < 1e-5, out[-2000:]
    graph = (tmp_path / "d" / "custom_layer.json").read_text()
    assert "custom_blocks:LowRankCross" in graph


def test_train_save_serve(tmp_path):
    out = run([str(ROOT / "examples" / "train_save_serve.py"), "--data-dir", str(tmp_path / "d"),
               *SMOKE], tmp_path)
    assert float(re.search(r"final AUC: ([0-9.]+)", out).group(1)) > 0.6, out[-2000:]
    diffs = _diffs(out)
    served_over_http = "'serve' extra" not in out
    assert len(diffs) == (2 if served_over_http else 1), out[-2000:]
    assert max(diffs) < 1e-5, out[-2000:]

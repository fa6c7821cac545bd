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

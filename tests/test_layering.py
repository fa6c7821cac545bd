"""The package's import layers (docs/architecture.md): lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "terarec"

# Lower number = lower layer. A module may import its own layer or lower ones.
LAYER = {
    "errors": 0, "enums": 0, "utils": 0, "sparse": 1,
    "embedding": 2, "layers": 2, "optim": 2, "data": 2, "metrics": 2,
    "graph": 3, "checkpoint": 3, "training": 4, "inference": 5, "serving": 6,
    "compat": 7, "cli": 8, "tools": 8, "demo": 8, "optimizer": 8, "__init__": 9, "__main__": 9,
    "distributed": 3, "kernels": 2, "torchrec": 4, "hugectr2onnx": 8,
}


def top_package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("terarec."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("terarec."):
                    out.add(alias.name.split(".")[1])
    return out


def test_no_upward_imports():
    bad = []
    for path in ROOT.rglob("*.py"):
        pkg = top_package(path)
        if pkg not in LAYER:
            bad.append(f"{path}: package {pkg!r} has no layer in tests/test_layering.py")
            continue
        for dep in imported_packages(path):
            if dep in LAYER and LAYER[dep] > LAYER[pkg]:
                bad.append(f"{path.relative_to(ROOT)} ({pkg}) imports terarec.{dep}")
    assert not bad, "\n".join(bad)


def test_inference_does_not_import_training():
    for path in (ROOT / "inference").rglob("*.py"):
        assert "training" not in imported_packages(path), path

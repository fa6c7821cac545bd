"""``terarec export-onnx GRAPH.json DENSE.model OUT.onnx``: the dense network as ONNX."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("export-onnx", help="export a trained model's dense network to ONNX")
    p.add_argument("graph", help="graph JSON written by Model.graph_to_json")
    p.add_argument("dense_model", help="the _dense_N.model file")
    p.add_argument("output", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from terarec.inference.onnx_export import export_onnx

    names = export_onnx(args.graph, args.dense_model, args.output, args.opset)
    print(f"wrote {args.output}; inputs: {', '.join(names)}; output: output (probabilities)")
    return 0

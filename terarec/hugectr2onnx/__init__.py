"""HugeCTR's ``hugectr2onnx`` converter: ``from terarec import hugectr2onnx``.

HugeCTR scripts that did ``import hugectr2onnx`` change that line to
``from terarec import hugectr2onnx`` and keep calling ``hugectr2onnx.converter.convert(...)``.
"""

from terarec.hugectr2onnx import converter

__all__ = ["converter"]

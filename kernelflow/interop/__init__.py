"""Interchange with other tools: ONNX export, and the graph as a TensorBoard GraphDef.

Imports graph and protocol only; ``onnx`` is imported when an export runs, and the
GraphDef is written with the protobuf wire format by hand (no tensorboard import).
"""

from .onnx_export import DEFAULT_OPSET, OnnxExportError, export_onnx, to_onnx

__all__ = ["DEFAULT_OPSET", "OnnxExportError", "export_onnx", "to_onnx"]

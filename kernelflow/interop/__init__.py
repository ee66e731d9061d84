"""Interchange with other tools: ONNX export and import, and the graph as a TensorBoard GraphDef.

Imports graph and protocol only; ``onnx`` is imported when an export runs, and the
GraphDef is written with the protobuf wire format by hand (no tensorboard import).
"""

from . import onnx_import_ops  # noqa: F401  (fills the import table)
from .onnx_export import DEFAULT_OPSET, OnnxExportError, export_onnx, to_onnx
from .onnx_import import ImportedModel, OnnxImportError, import_onnx

__all__ = ["DEFAULT_OPSET", "OnnxExportError", "export_onnx", "to_onnx", "ImportedModel", "OnnxImportError",
           "import_onnx"]

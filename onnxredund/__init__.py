"""onnxredund: find redundancy in convolutional neural networks from their ONNX files."""

from __future__ import annotations

__version__ = "0.1.0"

from onnxredund.errors import OnnxRedundError
from onnxredund.model import ConvLayer, Model, load_model

__all__ = ["ConvLayer", "Model", "OnnxRedundError", "__version__", "load_model"]

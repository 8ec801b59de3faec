"""Reading and describing ONNX models, without running them.

Owns: reading files safely (external data checked and left on disk, :mod:`.files`), validation
(:mod:`.validate`), graph queries and the one helper for attributes, copies, shape inference and
constants (:mod:`.graph`), the conv layer records (:mod:`.layers`) and the :class:`Model` record
(:mod:`.model`). May import only :mod:`onnxredund.errors`, onnx and numpy: nothing here creates a
session; loading a model, which frees its batch and may probe shapes with a run, is the engine's
(:func:`onnxredund.engine.load_model`).
"""

from __future__ import annotations

from onnxredund.model.files import (
    BASEPATH,
    PROTOBUF_LIMIT,
    all_tensors,
    external_folder,
    external_tensors,
    file_sha256,
    read_model_file,
    set_external_folder,
    tensor_array,
)
from onnxredund.model.graph import (
    ConstantTable,
    attribute,
    bodies,
    consumers_of,
    copy_model,
    data_dependent,
    data_inputs,
    default_opset,
    dequantize,
    dims,
    downstream,
    fold_tensors,
    infer_shapes,
    outer_reads,
    producers_of,
    quantize,
    quantize_op,
    shape_derived,
    value_infos,
)
from onnxredund.model.layers import ACTIVATION_OPS, CONV_OPS, ConvLayer, describe_layers
from onnxredund.model.model import (
    LAYOUTS,
    Model,
    ModelInput,
    channel_axis,
    classifier_output,
    classifier_outputs,
    image_layout,
    input_sizes,
    is_class_scores,
    later_batch_axes,
    output_kind,
    pick_image_input,
    set_input_shape,
    shape_table,
)
from onnxredund.model.validate import MAX_IR_VERSION, MAX_OPSET, MIN_OPSET, check_finite_weights, validate

__all__ = [
    "ACTIVATION_OPS",
    "BASEPATH",
    "CONV_OPS",
    "LAYOUTS",
    "MAX_IR_VERSION",
    "MAX_OPSET",
    "MIN_OPSET",
    "PROTOBUF_LIMIT",
    "ConstantTable",
    "ConvLayer",
    "Model",
    "ModelInput",
    "all_tensors",
    "attribute",
    "bodies",
    "channel_axis",
    "check_finite_weights",
    "classifier_output",
    "classifier_outputs",
    "consumers_of",
    "copy_model",
    "data_dependent",
    "data_inputs",
    "default_opset",
    "dequantize",
    "describe_layers",
    "dims",
    "downstream",
    "external_folder",
    "external_tensors",
    "file_sha256",
    "fold_tensors",
    "image_layout",
    "infer_shapes",
    "input_sizes",
    "is_class_scores",
    "later_batch_axes",
    "outer_reads",
    "output_kind",
    "pick_image_input",
    "producers_of",
    "quantize",
    "quantize_op",
    "read_model_file",
    "set_external_folder",
    "set_input_shape",
    "shape_derived",
    "shape_table",
    "tensor_array",
    "validate",
    "value_infos",
]

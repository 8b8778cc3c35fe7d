"""Read a TFLite flatbuffer: its ops, tensors, types and constants (no interpreter
needed); unpack it to the schema's object API and pack it back.

The interpreter's own op list is taken after delegation (XNNPACK replaces most
ops by ``DELEGATE`` nodes), so the graph is read from the file instead.
"""

import collections

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

MODEL_IDENTIFIER = b"TFL3"
# The TFLite schema asks for 16-byte aligned buffers (`force_align: 16`); the
# generated Python object API does not honour it.
_BUFFER_ALIGNMENT = 16

_BUILTIN_NAMES = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}
_TENSOR_TYPE_NAMES = {
    code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")
}


def _model(model):
    if not isinstance(model, (bytes, bytearray)):
        with open(model, "rb") as f:
            model = f.read()
    return schema.Model.GetRootAsModel(model, 0)


def _op_names(model):
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if code.CustomCode():
            names.append("CUSTOM:" + code.CustomCode().decode())
        else:
            # Codes above 127 live in `BuiltinCode`, older ones in the deprecated field.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            names.append(_BUILTIN_NAMES[builtin])
    return names


def _subgraphs(model):
    return [model.Subgraphs(s) for s in range(model.SubgraphsLength())]


def op_histogram(model):
    """``Counter`` of op names over every subgraph (custom ops as ``CUSTOM:<name>``).

    Args:
        model: the ``.tflite`` bytes or path.
    """
    model = _model(model)
    names = _op_names(model)
    return collections.Counter(
        names[graph.Operators(j).OpcodeIndex()]
        for graph in _subgraphs(model)
        for j in range(graph.OperatorsLength())
    )


def tensor_names(model):
    """Names of every tensor of every subgraph."""
    model = _model(model)
    return [
        graph.Tensors(t).Name().decode()
        for graph in _subgraphs(model)
        for t in range(graph.TensorsLength())
    ]


def constant_tensors(model):
    """``[(name, type name, shape)]`` of the tensors stored in the file (weights, constants)."""
    model = _model(model)
    constants = []
    for graph in _subgraphs(model):
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            if model.Buffers(tensor.Buffer()).DataLength() > 0:
                constants.append((
                    tensor.Name().decode(),
                    _TENSOR_TYPE_NAMES[tensor.Type()],
                    tuple(tensor.ShapeAsNumpy()) if tensor.ShapeLength() else (),
                ))
    return constants


def constant_elements(model):
    """Number of stored constant values, by type name (e.g. ``{"FLOAT32": 680000}``)."""
    counts = collections.Counter()
    for _, type_name, shape in constant_tensors(model):
        counts[type_name] += int(np.prod(shape, dtype=np.int64))
    return dict(counts)


def input_types(model):
    """Type names of the inputs of the first subgraph, in input order."""
    model = _model(model)
    graph = model.Subgraphs(0)
    return [_TENSOR_TYPE_NAMES[graph.Tensors(graph.Inputs(i)).Type()] for i in range(graph.InputsLength())]


def activation_types(model):
    """Number of computed (not stored) tensors, by type name (e.g. ``{"INT8": 150}``)."""
    model = _model(model)
    return dict(collections.Counter(
        _TENSOR_TYPE_NAMES[tensor.Type()]
        for graph in _subgraphs(model)
        for tensor in (graph.Tensors(t) for t in range(graph.TensorsLength()))
        if model.Buffers(tensor.Buffer()).DataLength() == 0
    ))


def unpack(model):
    """The ``ModelT`` (object API, editable) of the ``.tflite`` bytes ``model``."""
    return schema.ModelT.InitFromPackedBuf(model, 0)


def pack(model_t) -> bytes:
    """A ``ModelT`` back to ``.tflite`` bytes, buffers 16-byte aligned."""
    for buffer in model_t.buffers:
        buffer.__class__ = _AlignedBuffer
    return finish(model_t.Pack, MODEL_IDENTIFIER)


def finish(pack_table, identifier: bytes) -> bytes:
    """The flatbuffer of one object-API table (``pack_table`` = its ``Pack``)."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(pack_table(builder), identifier)
    return bytes(builder.Output())


class _AlignedBuffer(schema.BufferT):
    """A `BufferT` that packs its data 16-byte aligned, as the schema asks."""

    def Pack(self, builder):
        data = None
        if self.data is not None and len(self.data):
            payload = bytes(memoryview(self.data).cast("B"))
            builder.StartVector(1, len(payload), _BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, self.offset)
        schema.BufferAddSize(builder, self.size)
        return schema.BufferEnd(builder)

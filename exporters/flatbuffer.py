"""Read a TFLite flatbuffer: its ops, tensors, types and constants (no interpreter needed).

The interpreter's own op list is taken after delegation (XNNPACK replaces most
ops by ``DELEGATE`` nodes), so the graph is read from the file instead.
"""

import collections

import numpy as np
from ai_edge_litert import schema_py_generated as schema

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

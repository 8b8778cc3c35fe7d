"""Export a detector checkpoint as an ONNX model, checked in onnxruntime before it is written.

    python -m exporters.onnx --checkpoint model_dir/best.keras --output export/model.onnx \\
        [--precision fp32|fp16]

Needs the optional ``onnx`` extra (``pip install -c constraints.txt '.[onnx]'``:
tf2onnx, onnx, onnxruntime). The graph is the SavedModel's: one input
``input_tensor`` uint8 ``(B, H, W, 3)``, any size (the same within a batch),
resized bilinearly to the model's ``S x S`` in the graph (aspect ratio not kept,
as in training), then the network and its post-processing (box decoding,
softmax, per-class NMS); outputs the four `exporters.common.DETECTION_KEYS`
(the TF OD API's names), class ids **0-based** as ``labels.txt``, the TFLite
files and the SavedModel's ``detect_zero_based`` signature.

The converter is tf2onnx's ``convert.from_function`` on the serving function
(`exporters.common.serving_function`), at `OPSET`. Keras 3's own
``model.export(format="onnx")`` calls the same function on the TensorFlow
backend, but on the network's ``call`` only: the post-processing would be left
out of the graph, and the input would be float32 at a fixed size.

``fp16`` stores every convolution kernel as float16, each followed by a
``Cast`` to float32 (computed in float32, as the fp16 TFLite file: half the
file, onnxruntime folds the casts when it loads the model). There is no int8
path: onnxruntime ran tf2onnx's int8 (QDQ) conversion slower than fp32 on this
CPU (exporters/README.md, "Runtimes").

The model describes itself in ``metadata_props``: ``labels`` (the class names,
one a line, in class id order), ``keras_scb_export`` (the JSON of
`exporters.common.export_metadata`: image size, classes, anchors, decoder) and
``class_ids`` (``0-based``). ``labels.txt`` is written next to the file too.
Before the file takes its name it is loaded and run once by onnxruntime in a
child process (`exporters.runtime.smoke_load`).
"""

import json
import os

from absl import flags

from exporters import common, runtime
from keras_scb import cli

PRECISIONS = ("fp32", "fp16")
# The newest opset tf2onnx 1.17 writes by default; onnxruntime >= 1.14 runs it.
OPSET = 17
INPUT_NAME = "input_tensor"
LABELS_KEY = "labels"


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError:
        raise cli.UserError(
            "The ONNX export needs tf2onnx: pip install -c constraints.txt '.[onnx]'."
        ) from None
    return tf2onnx


def convert(detector, precision="fp32", class_names=None, **decoder_kwargs):
    """The ONNX model (``onnx.ModelProto``) of ``detector`` and its post-processing.

    Args:
        detector: a `keras_scb.models.Detector`.
        precision: one of `PRECISIONS`.
        class_names: stored in ``metadata_props`` (``None``: no labels).
        **decoder_kwargs: `keras_scb.postprocess.PostProcessor` options.
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    tf2onnx = _tf2onnx()
    signature = [tf.TensorSpec((None, None, None, 3), tf.uint8, name=INPUT_NAME)]
    detect = tf.function(
        common.serving_function(detector, resize=True, **decoder_kwargs), input_signature=signature
    )
    model, _ = tf2onnx.convert.from_function(detect, input_signature=signature, opset=OPSET)
    outputs = [o.name for o in model.graph.output]
    if sorted(outputs) != sorted(common.DETECTION_KEYS):
        raise ValueError(f"tf2onnx named the outputs {outputs}; expected {common.DETECTION_KEYS}.")
    if precision == "fp16":
        float16_kernels(model)
    properties = {
        LABELS_KEY: "".join(f"{name}\n" for name in class_names or ()),
        common.METADATA_NAME: json.dumps(
            common.export_metadata(detector, class_names, decoder_kwargs, precision=precision,
                                   input=INPUT_NAME, class_ids="0-based")
        ),
        "class_ids": "0-based",
    }
    del model.metadata_props[:]
    for key, value in properties.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "keras-scb (tf2onnx)"
    return model


def float16_kernels(model):
    """Stores the float32 kernels of ``model``'s ``Conv`` nodes as float16, each
    behind a ``Cast`` to float32 (in place); the biases and every other constant
    (anchors, thresholds) stay float32."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    kernels = {
        node.input[1] for node in graph.node
        if node.op_type == "Conv" and node.input[1] in initializers
        and initializers[node.input[1]].data_type == TensorProto.FLOAT
    }
    if not kernels:
        raise ValueError("No float32 Conv kernel to store as float16.")
    casts = []
    for name in sorted(kernels):
        tensor = initializers[name]
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{name}_fp16")
        graph.initializer.remove(tensor)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT,
                                      name=f"{name}_to_fp32"))
    # Nodes must be in topological order: the casts, fed by initializers only, go first.
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def export_onnx(detector, path, precision="fp32", class_names=None, overwrite=False,
                **decoder_kwargs):
    """Converts ``detector`` (see `convert`) and writes ``path`` atomically, after
    onnxruntime has loaded and run the file once in a child process; also writes
    ``labels.txt`` next to it when ``class_names`` are known.

    Returns:
        ``path``.
    """
    class_names = common.export_class_names(detector, class_names)
    common.prepare_output(path, overwrite)
    model = convert(detector, precision, class_names, **decoder_kwargs)
    with common.atomic_output(path, overwrite) as temporary:
        with open(temporary, "wb") as f:
            f.write(model.SerializeToString())
        runtime.smoke_load(temporary, path)
    if class_names:
        labels = os.path.join(os.path.dirname(os.path.abspath(path)), common.LABELS_FILE)
        common.write_labels(class_names, labels)
    return path


def _define_flags():
    common.define_export_flags("The .onnx file to write.")
    flags.DEFINE_enum("precision", "fp32", PRECISIONS,
                      "fp16: convolution kernels stored as float16 (computed in float32).")


def main(argv):
    del argv
    values = flags.FLAGS
    _tf2onnx()  # fail before loading anything
    # The one output rule: never over (or inside) the checkpoint it reads.
    common.prepare_output(values.output, values.overwrite, [values.checkpoint])
    detector = common.load_detector(values.checkpoint)
    class_names = common.read_class_names(values.checkpoint, values.class_names)
    export_onnx(
        detector, values.output, values.precision, class_names, values.overwrite,
        **common.decoder_kwargs_from_flags(values),
    )
    print(
        f"ONNX ({values.precision}, opset {OPSET}) written to {values.output}: input "
        f"{INPUT_NAME} uint8 (B, H, W, 3), outputs {', '.join(common.DETECTION_KEYS)} "
        "(class ids 0-based); checked in onnxruntime."
    )


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

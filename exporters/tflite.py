"""Export a detector checkpoint as a TFLite model with the post-processing inside.

    python -m exporters.tflite --checkpoint model_dir/best.keras \\
        --output export/model.tflite --precision int8 --representative_data bccd

Layout (what mobile detection runtimes expect of an SSD): one input, uint8
``(1, S, S, 3)`` RGB; four float32 outputs in this order: ``detection_boxes``
``(1, K, 4)`` ``[ymin, xmin, ymax, xmax]``, ``detection_classes`` ``(1, K)``
(0-based), ``detection_scores`` ``(1, K)``, ``num_detections`` ``(1,)``: the
layout of ``TFLite_Detection_PostProcess``.

The post-processing is `keras_scb.postprocess.PostProcessor` in its single-image mode (box
decoding, softmax, per-class top-k and NMS from ``NonMaxSuppressionV4``, for one
image: no ``WHILE`` loop), converted to TFLite builtin ops, so the file gives
the Keras model's detections. The converter is restricted to builtin ops: an op
that would need the Flex delegate (``SELECT_TF_OPS``) makes the export fail
instead of producing a file that no standard interpreter runs. The ``TFLite_Detection_PostProcess`` custom op is not
used: its fast mode is class-agnostic NMS (different detections than the Keras
model) and its per-class mode was seen to never emit one of the classes.

Precisions: ``fp32``; ``fp16`` (float16 weights, float32 compute); ``int8``
(the network's weights and activations int8, calibrated on representative
images; the post-processing stays float, see `quantize_network`).
"""

import collections
import os

from absl import flags

from exporters import common, metadata, runtime
from keras_scb import cli
from keras_scb import flags as common_flags

PRECISIONS = ("fp32", "fp16", "int8")
LICENSE = "Apache-2.0"  # the project's, written into the model metadata
REPRESENTATIVE_SOURCES = ("bccd", "synthetic")


def _serving_concrete_function(detector, postprocess=True, **decoder_kwargs):
    """``(concrete function, archive)``; the archive owns the variables it captures.

    Exporting through `keras.export.ExportArchive` (not a hand-made
    ``tf.Module``, which once produced a TFLite file with NaN outputs).
    """
    import keras
    import tensorflow as tf

    size = detector.image_size
    archive = keras.export.ExportArchive()
    archive.track(detector)
    if postprocess:
        serve = common.serving_function(detector, single_image=True, **decoder_kwargs)
    else:
        serve = common.raw_serving_function(detector)
    function = archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[tf.TensorSpec((1, size, size, 3), tf.uint8, name="images")],
    )
    # A concrete function keeps the outputs in `tf.nest` order (sorted keys =
    # DETECTION_KEYS or RAW_DETECTION_KEYS), which `exporters.metadata` names;
    # from a SavedModel signature the converter orders them arbitrarily.
    return function.get_concrete_function(), archive


def convert(
    detector,
    precision="fp32",
    representative_images=None,
    postprocess=True,
    class_names=None,
    category_labels="names",
    **decoder_kwargs,
):
    """The TFLite file of ``detector`` with its post-processing, named outputs,
    a SignatureDef and TFLite Model Metadata (`exporters.metadata`).

    Args:
        detector: a `keras_scb.models.Detector`.
        precision: one of `PRECISIONS`.
        representative_images: for ``int8``, an iterable (or a function
            returning one) of uint8 images ``(S, S, 3)`` or ``(1, S, S, 3)``;
            a few hundred cover a dataset, tens suffice to test.
        postprocess: include the NMS; without, the outputs are every anchor's
            decoded box and class probabilities (`common.raw_outputs`).
        class_names: embedded as the category labels (``None``: no label file).
        category_labels: how they are embedded, `exporters.metadata.CATEGORY_LABELS`
            (``"indices"``: MediaPipe reports class indices rather than names).
        **decoder_kwargs: `keras_scb.postprocess.PostProcessor` options.

    Returns:
        ``bytes``.

    Raises:
        ValueError: no calibration image for ``int8``, or the converted file
            does not have the precision asked for (`check_precision`).
    """
    import numpy as np
    import tensorflow as tf

    import keras_scb

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    if precision == "int8":
        representative_images = _calibration_source(representative_images)
    function, archive = _serving_concrete_function(detector, postprocess, **decoder_kwargs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], archive)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def calibration_inputs():
            for image in representative_images():
                image = np.asarray(image, np.uint8)
                yield [image.reshape((1,) + image.shape[-3:])]

        converter.representative_dataset = calibration_inputs
    model = quantize_network(converter) if precision == "int8" else converter.convert()
    check_precision(model, precision)
    name = detector.registry_name or detector.name
    return metadata.describe_detector(
        model,
        class_names,
        name=name,
        description=_description(detector, name, precision, postprocess, decoder_kwargs),
        version=keras_scb.__version__,
        license=LICENSE,
        postprocess=postprocess,
        category_labels=category_labels,
    )


def quantize_network(converter):
    """int8 conversion of the network, the post-processing kept float.

    The converter alone quantizes every op that has an int8 kernel, the
    post-processing included: scores then move in steps of 1/256 (ties, and one
    step apart between runtimes), boxes in steps of 1/255 of the image, and
    NMS compares boxes quantized to ~6 pixels. Here the converter only
    calibrates, then TF's quantizer runs on the calibrated model (the two
    steps of `tf.lite.experimental.QuantizationDebugger`, through the same TF
    internals it uses: ``_experimental_calibrate_only``, ``mlir_quantize``;
    `test_int8_quantized_and_agreement` fails if they change); the calibration statistics of every tensor
    of the post-processing (`common.POSTPROCESS_SCOPE`, and what follows it)
    are dropped and its ops denied to the quantizer, so that only the network
    is int8 and its output is dequantized once.

    Args:
        converter: a ``TFLiteConverter`` set up for int8 (optimizations and
            representative dataset).

    Returns:
        The ``.tflite`` bytes.
    """
    from tensorflow.lite.python import convert as lite_convert

    from exporters import flatbuffer

    converter._experimental_calibrate_only = True
    model_t = flatbuffer.unpack(converter.convert())
    (graph,) = model_t.subgraphs
    names = []
    for index in _postprocessing_tensors(graph):
        graph.tensors[index].quantization = None
        names.append(graph.tensors[index].name.decode())
    return lite_convert.mlir_quantize(
        flatbuffer.pack(model_t),
        denylisted_nodes=names,
        # A multi-output op's location fuses its output names ("a;a1"), which
        # no node name matches: TOPK_V2 (post-processing only) is denied by type.
        denylisted_ops=["TOPK_V2"],
    )


def _postprocessing_tensors(graph):
    """Indices of the tensors computed in `common.POSTPROCESS_SCOPE` or from them."""
    prefix = (common.POSTPROCESS_SCOPE + "/").encode()
    found = set()
    for op in graph.operators:  # in execution order: inputs come before their uses
        outputs = {int(i) for i in op.outputs}
        if found.intersection(int(i) for i in op.inputs if i >= 0) or any(
            graph.tensors[i].name.startswith(prefix) for i in outputs
        ):
            found |= outputs
    if not found:  # the serving functions define the scope: a bug, not bad input
        raise RuntimeError(f"No op in the name scope {common.POSTPROCESS_SCOPE!r}.")
    return sorted(found)


def _calibration_source(representative_images):
    """``representative_images`` as a function returning a fresh iterator,
    checked to give at least one image before any conversion starts."""
    if representative_images is None:
        raise ValueError("int8 needs representative_images (calibration images).")
    if not callable(representative_images):
        images = list(representative_images)
        representative_images = lambda: images  # noqa: E731
    if next(iter(representative_images()), None) is None:
        raise ValueError("int8 calibration: the representative images are empty.")
    return representative_images


def _description(detector, name, precision, postprocess, decoder_kwargs):
    from keras_scb.postprocess import DECODER_DEFAULTS

    settings = {**DECODER_DEFAULTS, **decoder_kwargs}
    outputs = (
        "Outputs: boxes, classes, scores, number of detections (the layout of "
        "TFLite_Detection_PostProcess), after per-class NMS at IoU "
        f"{settings['iou_threshold']} of the best {settings['pre_nms_top_k']} candidates "
        f"a class, scores >= {settings['score_threshold']}, at most "
        f"{settings['max_detections']} detections."
        if postprocess
        else "Outputs: every anchor's decoded box and class probabilities, before NMS."
    )
    return (
        f"{name} SSD-family object detector, {detector.num_classes} classes, "
        f"{detector.image_size}x{detector.image_size} input, {precision}, exported by "
        "keras-scb. It was trained with the scale-balanced (SCB) loss, which changes "
        "training only: the network, its post-processing (SSD box decoding, softmax, "
        "per-class NMS) and its inference cost are those of a standard SSD. " + outputs
    )


def check_precision(model, precision):
    """Raises `ValueError` unless ``model`` (``.tflite`` bytes) is stored as
    ``precision`` promises: uint8 input; convolution kernels (every 4-D
    constant) float32 (``fp32``), float16 (``fp16``) or int8 (``int8``, with
    int8 activations too).

    A converter that gets no calibration data, or cannot quantize, silently
    writes a float model; this keeps such a file from being named int8.
    """
    from exporters import flatbuffer

    problems = []
    inputs = flatbuffer.input_types(model)
    if inputs != ["UINT8"]:
        problems.append(f"input types {inputs}, expected ['UINT8']")
    expected = {"fp32": "FLOAT32", "fp16": "FLOAT16", "int8": "INT8"}[precision]
    kernels = collections.Counter(
        kind for _, kind, shape in flatbuffer.constant_tensors(model) if len(shape) == 4
    )
    if set(kernels) != {expected}:
        problems.append(f"convolution kernels {dict(kernels)}, expected all {expected}")
    if precision == "int8" and not flatbuffer.activation_types(model).get("INT8"):
        problems.append("no int8 activation")
    if problems:
        raise ValueError(f"The converted model is not {precision}: {'; '.join(problems)}.")


def export_tflite(
    detector,
    path,
    precision="fp32",
    representative_images=None,
    class_names=None,
    overwrite=False,
    postprocess=True,
    category_labels="names",
    **decoder_kwargs,
):
    """Converts ``detector`` (see `convert`) and writes ``path`` atomically.

    Before the file takes its name, it is loaded and run once in a child
    process by the LiteRT interpreter with its default options (the XNNPACK
    delegate), as every client does (`exporters.runtime.smoke_load`): a file
    that crashes the runtime or gives non-finite outputs is not written.

    Also writes ``labels.txt`` next to ``path`` when ``class_names`` are given
    (the usual TFLite detection label file: one name per line, class id order).

    Returns:
        ``path``.
    """
    class_names = common.export_class_names(detector, class_names)
    common.prepare_output(path, overwrite, foreign=foreign_files)
    model = convert(
        detector, precision, representative_images, postprocess, class_names, category_labels,
        **decoder_kwargs,
    )
    with common.atomic_output(path, overwrite, foreign=foreign_files) as temporary:
        with open(temporary, "wb") as f:
            f.write(model)
        runtime.smoke_load(temporary, path)
    if class_names:
        labels = os.path.join(os.path.dirname(os.path.abspath(path)), common.LABELS_FILE)
        common.write_labels(class_names, labels)
    return path


def foreign_files(path):
    """``[path]`` if the existing file is not a TFLite flatbuffer (its file
    identifier ``TFL3``), which ``--overwrite`` may then not replace."""
    with open(path, "rb") as f:
        header = f.read(8)
    return [] if header[4:8] == b"TFL3" else [os.path.basename(path)]


def dataset_images(dataset, image_size, count=None):
    """Yields uint8 ``(S, S, 3)`` images of a `keras_scb.data.Dataset`, in order.

    Decoded and resized bilinearly as `keras_scb.data.validation_pipeline` does,
    then rounded to uint8, the input type of the exported models.
    """
    import numpy as np

    from keras_scb.data import validation_pipeline

    batches = validation_pipeline(dataset, image_size=image_size, batch_size=8)
    seen = 0
    for images, _ in batches:
        for image in np.asarray(images):
            if count is not None and seen >= count:
                return
            yield to_uint8(image)
            seen += 1


def to_uint8(images):
    """float ``[0, 255]`` -> uint8, rounded to nearest."""
    import numpy as np

    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def folder_image_paths(folder):
    """The image files of ``folder``, sorted; `ValueError` if there are none."""
    from keras_scb.data.records import IMAGE_EXTENSIONS, is_image_file

    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder) if is_image_file(name))
    if not paths:
        raise ValueError(
            f"{folder}: no {'/'.join(IMAGE_EXTENSIONS)} image to calibrate int8 with."
        )
    return paths


def folder_images(folder, image_size, count=None):
    """Yields uint8 ``(S, S, 3)`` images from the image files of ``folder`` (sorted).

    Raises:
        ValueError: naming the file, for a file that does not decode.
    """
    import tensorflow as tf

    from keras_scb.data.records import read_image

    for path in folder_image_paths(folder)[:count]:
        image = read_image(path)
        resized = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
        yield to_uint8(resized.numpy())


def representative_images(source, image_size, count=100, split="train"):
    """Calibration images for int8, as a function returning a fresh iterator.

    Args:
        source: ``"bccd"`` (the vendored BCCD ``split``, through the data
            pipeline's reader), ``"synthetic"`` (`keras_scb.data.make_synthetic`)
            or a folder of images.
        image_size: the model's ``S``.
        count: how many images (at least 1).

    Raises:
        ValueError: ``count < 1``, an unknown source or a folder without images
            (before any image is decoded).
    """
    from keras_scb import data

    if count is None or count < 1:
        raise ValueError(f"representative count must be at least 1; got {count}.")
    if source == "bccd":
        dataset = data.load_bccd(split)
    elif source == "synthetic":
        dataset = data.make_synthetic(count, image_size=(image_size, image_size))
    elif os.path.isdir(source):
        folder_image_paths(source)  # fails now on an empty folder
        return lambda: folder_images(source, image_size, count)
    else:
        raise ValueError(
            f"representative data must be one of {REPRESENTATIVE_SOURCES} or a folder; got {source!r}."
        )
    return lambda: dataset_images(dataset, image_size, count)


def _define_flags():
    common.define_export_flags("The .tflite file to write.")
    flags.DEFINE_enum("precision", "fp32", PRECISIONS, "Weights/activations precision.")
    flags.DEFINE_string(
        "representative_data", "bccd",
        "int8 calibration images: 'bccd' (train split), 'synthetic' or a folder.",
    )
    flags.DEFINE_integer("representative_count", 100, "int8 calibration images.")
    flags.DEFINE_bool(
        "postprocess", True,
        "Include the NMS; --nopostprocess exports every anchor's decoded box "
        "(1, A, 4) and class probabilities (1, A, C) instead.",
    )
    flags.DEFINE_enum(
        "mediapipe_categories", "names", metadata.CATEGORY_LABELS,
        "What MediaPipe's ObjectDetector reports per detection, which gives one or the "
        "other: 'names' (category_name; index None) or 'indices' (index = class id; "
        "labels.txt stays embedded as the model's class description).",
    )
    common_flags.at_least("representative_count", 1)


def main(argv):
    del argv
    values = flags.FLAGS
    common.prepare_output(values.output, values.overwrite, [values.checkpoint],
                          foreign=foreign_files)  # fail before the conversion
    detector = common.load_detector(values.checkpoint)
    class_names = common.read_class_names(values.checkpoint, values.class_names)
    representative = None
    if values.precision == "int8":
        representative = representative_images(
            values.representative_data, detector.image_size, values.representative_count
        )
    export_tflite(
        detector, values.output, values.precision, representative, class_names,
        values.overwrite, values.postprocess, values.mediapipe_categories,
        **common.decoder_kwargs_from_flags(values),
    )
    outputs = (
        ", ".join(common.DETECTION_KEYS) if values.postprocess
        else ", ".join(common.RAW_DETECTION_KEYS)
    )
    print(
        f"TFLite ({values.precision}) written to {values.output}: uint8 input "
        f"(1, {detector.image_size}, {detector.image_size}, 3); outputs {outputs}; "
        "builtin ops only (no SELECT_TF_OPS / Flex delegate needed)."
    )


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

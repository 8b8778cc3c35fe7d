"""What the exporters share: loading a checkpoint, the serving function, atomic writes.

Serving convention (every exported format): uint8 RGB images in, and the TF
Object Detection API's outputs, for ``K = max_detections``:

- ``detection_boxes``: float32 ``(B, K, 4)`` relative ``[ymin, xmin, ymax, xmax]``;
- ``detection_classes``: float32 ``(B, K)`` class ids ``0..C-1`` (0-based, as the
  TFLite detection runtimes and ``labels.txt`` count; no background id);
- ``detection_scores``: float32 ``(B, K)``, descending;
- ``num_detections``: float32 ``(B,)``; rows past it are zeros.

Sorted by name, the keys are in the order of the outputs of TFLite's
``TFLite_Detection_PostProcess`` (boxes, classes, scores, count).
"""

import dataclasses
import os

from keras_scb import label_map

# Re-exported: the exporters write through the package's one file-writing module.
from keras_scb.fileio import atomic_output, prepare_output, write_json, write_text  # noqa: F401

DETECTION_KEYS = (
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
)
# The raw (no NMS) exports' outputs: every anchor's ``[ymin, xmin, ymax, xmax]``
# box (B, A, 4) and foreground class probabilities (B, A, C), see `raw_outputs`.
RAW_DETECTION_KEYS = ("raw_detection_boxes", "raw_detection_scores")
# The name scope of the serving functions' post-processing ops (the int8 TFLite
# export keeps them float, see `exporters.tflite`).
POSTPROCESS_SCOPE = "postprocess"
# Export box order from the library's [xmin, ymin, xmax, ymax] and back (a swap).
YXYX = [1, 0, 3, 2]
LABELS_FILE = label_map.LABELS_FILE
# The export's description (`export_metadata`): a JSON file in a SavedModel folder,
# an entry of an ONNX model's metadata_props.
METADATA_NAME = "keras_scb_export"
METADATA_FILE = METADATA_NAME + ".json"


def load_detector(checkpoint):
    """A `keras_scb.models.Detector` from a ``.keras`` file, without its loss.

    ``compile=False``: the loss and optimizer are not deserialised, so nothing
    exported can depend on how the checkpoint was trained.
    """
    from keras_scb.checkpoints import load_detector_checkpoint

    return float32_detector(load_detector_checkpoint(checkpoint))


def _float32_policies(config):
    """``config`` with every mixed-precision dtype policy replaced by float32."""
    if isinstance(config, list):
        return [_float32_policies(c) for c in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy":
        name = config.get("config", {}).get("name", "")
        if name.startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
    return {k: _float32_policies(v) for k, v in config.items()}


def float32_detector(detector):
    """``detector`` computing in float32 (itself if it already does).

    A model trained under a mixed policy keeps that policy in every layer's
    config, and TFLite has no builtin kernels for bfloat16 convolutions; the
    weights themselves are float32, so a float32 rebuild is the same network.
    """
    import keras

    config = keras.saving.serialize_keras_object(detector)
    float32_config = _float32_policies(config)
    if float32_config == config:
        return detector
    rebuilt = keras.saving.deserialize_keras_object(float32_config)
    rebuilt.set_weights(detector.get_weights())
    return rebuilt


def read_class_names(model_path=None, class_names=None):
    """The label map of a model, checked: ``class_names`` if given, else the model's own.

    The model's own names are those stored in a ``.keras`` checkpoint
    (`keras_scb.checkpoints.checkpoint_class_names`, which also checks the
    ``labels.txt`` next to it), else the ``labels.txt`` of the model (inside a
    SavedModel folder, next to a ``.tflite`` file).

    Args:
        model_path: a ``.keras`` file, an exported SavedModel folder or a
            ``.tflite`` file; or None.
        class_names: given names (``--class_names``): a sequence, or a
            comma-separated string; they must be the model's, if it has any.

    Returns:
        A tuple of names, or ``None`` when neither is available.

    Raises:
        LabelMapError: the given names differ from the model's, or a
            checkpoint's stored names differ from its ``labels.txt``; the
            message names both lists.
    """
    from keras_scb.checkpoints import checkpoint_class_names

    if isinstance(class_names, str):
        class_names = [name.strip() for name in class_names.split(",")]
    given = tuple(class_names) if class_names else None
    if model_path is None:
        return given
    model_path = os.fspath(model_path)
    if model_path.endswith(".keras") and os.path.isfile(model_path):
        own, source = checkpoint_class_names(model_path), f"checkpoint {model_path}"
    else:
        own, source = label_map.labels_beside(model_path), label_map.labels_path(model_path)
        embedded, where = _embedded_class_names(model_path)
        if embedded is not None and own is not None:  # a labels.txt that disagrees: an error
            label_map.check_same(embedded, own, where, source,
                                 f"fix or delete {source}")
        own, source = (embedded, where) if embedded is not None else (own, source)
    if given is not None and own is not None:
        label_map.check_same(own, given, source, f"--class_names={','.join(given)}")
    return given or own


def _embedded_class_names(model_path):
    """``(names, where)``: the label map an export carries inside itself (a
    ``.tflite``'s metadata, a SavedModel's `METADATA_FILE`), or ``(None, None)``."""
    if model_path.endswith(".tflite") and os.path.isfile(model_path):
        from exporters.metadata import embedded_class_names

        return embedded_class_names(model_path), f"the metadata of {model_path}"
    path = os.path.join(model_path, METADATA_FILE)
    if os.path.isdir(model_path) and os.path.isfile(path):
        names = read_export_metadata(model_path)["class_names"]
        return (None if names is None else tuple(names)), path
    return None, None


def read_export_metadata(folder):
    """The `METADATA_FILE` of an export folder, its fields checked: ``image_size`` a
    whole number >= 1, ``class_names`` None or a list of names; a `ValueError`
    naming the file and the field otherwise."""
    from keras_scb.fileio import read_json, short_repr

    path = os.path.join(folder, METADATA_FILE)
    record = read_json(path, "export metadata")
    if not isinstance(record, dict):
        raise ValueError(f"export metadata {path} is not a JSON object.")
    size, names = record.get("image_size"), record.get("class_names")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"export metadata {path}: field 'image_size' is {short_repr(size)}, "
                         "not a whole number >= 1.")
    if names is not None and not (isinstance(names, list) and names
                                  and all(isinstance(n, str) for n in names)):
        raise ValueError(f"export metadata {path}: field 'class_names' is {short_repr(names)}, "
                         "not a list of names.")
    return record


def export_class_names(detector, class_names=None):
    """The class names an export writes: ``class_names`` if given, else the
    detector's own (`keras_scb.models.Detector.class_names`); checked against its
    classes, and given names against its own (`keras_scb.label_map.check_same`)."""
    from keras_scb.models.detector import check_class_names

    if class_names and detector.class_names is not None:
        label_map.check_same(detector.class_names, class_names,
                             f"the model {detector.name!r}", "the class names to export")
    return check_class_names(class_names or detector.class_names, detector.num_classes)


def serving_function(detector, resize=False, single_image=False, **decoder_kwargs):
    """``images uint8 (B, H, W, 3) -> dict of DETECTION_KEYS`` (TensorFlow graph code).

    Args:
        detector: a `keras_scb.models.Detector`.
        resize: resize any ``H x W`` bilinearly to the model's ``S x S`` (the
            aspect ratio is not kept, as in training); otherwise ``H = W = S``.
        single_image: the batch is one image (``B = 1``): the post-processing's
            single-image mode, without ``tf.map_fn`` (for TFLite).
        **decoder_kwargs: `keras_scb.postprocess.PostProcessor` options.

    The detector is called with ``training=False`` explicitly: without it, a
    nested model behind a ``keras.layers.Resizing`` runs its BatchNorms in
    training mode (measured with Keras 3.15).
    """
    import tensorflow as tf

    from keras_scb.postprocess import build_postprocessor

    size = detector.image_size
    postprocessor = build_postprocessor(
        detector, name="decode", single_image=single_image, **decoder_kwargs
    )

    def detect(images):
        pixels = tf.cast(images, tf.float32)
        if resize:
            pixels = tf.image.resize(pixels, (size, size), method="bilinear")
        raw = detector(pixels, training=False)
        with tf.name_scope(POSTPROCESS_SCOPE):
            return export_outputs(postprocessor(raw))

    return detect


def raw_serving_function(detector):
    """``images uint8 (B, S, S, 3) -> dict of RAW_DETECTION_KEYS``: the
    post-processing's decoding without its NMS (`raw_outputs`)."""
    import tensorflow as tf

    from keras_scb.postprocess import build_postprocessor

    postprocessor = build_postprocessor(detector, name="decode")

    def detect(images):
        raw = detector(tf.cast(images, tf.float32), training=False)
        with tf.name_scope(POSTPROCESS_SCOPE):
            return raw_outputs(*postprocessor.decode(raw))

    return detect


def raw_outputs(boxes, probs):
    """`keras_scb.postprocess.PostProcessor.decode` -> the raw exports' outputs.

    ``raw_detection_boxes``: ``(B, A, 4)`` ``[ymin, xmin, ymax, xmax]`` (the
    export box order, as `export_outputs`); ``raw_detection_scores``: ``(B, A, C)``
    foreground probabilities, column ``k`` for class id ``k`` (the background
    column left out: it is one minus their sum).
    """
    import tensorflow as tf

    return {
        "raw_detection_boxes": tf.gather(boxes, YXYX, axis=-1),
        "raw_detection_scores": probs[..., 1:],
    }


def export_outputs(detections):
    """`keras_scb.postprocess` outputs -> the export outputs (`DETECTION_KEYS`).

    The one place where the library's ``[xmin, ymin, xmax, ymax]`` becomes the TF
    Object Detection API's ``[ymin, xmin, ymax, xmax]``, and ids and counts
    become float32 (as ``TFLite_Detection_PostProcess`` gives them).
    With the post-processing's extra outputs (``PostProcessor(extra_outputs=True)``)
    also the TF OD API's ``detection_anchor_indices`` (float32 ``(B, K)``),
    ``detection_multiclass_scores`` ``(B, K, C + 1)``, ``raw_detection_boxes``
    ``(B, A, 4)`` ``[ymin, xmin, ymax, xmax]`` and ``raw_detection_scores``
    ``(B, A, C + 1)`` (background at 0).
    """
    import tensorflow as tf

    outputs = {
        "detection_boxes": tf.gather(detections["boxes"], YXYX, axis=-1),
        "detection_classes": tf.cast(detections["classes"], tf.float32),
        "detection_scores": detections["scores"],
        "num_detections": tf.cast(detections["num_detections"], tf.float32),
    }
    if "raw_boxes" in detections:
        outputs.update({
            "detection_anchor_indices": tf.cast(detections["anchor_indices"], tf.float32),
            "detection_multiclass_scores": detections["multiclass_scores"],
            "raw_detection_boxes": tf.gather(detections["raw_boxes"], YXYX, axis=-1),
            "raw_detection_scores": detections["raw_scores"],
        })
    return outputs


def corner_boxes(detection_boxes):
    """Exported ``(..., 4)`` ``[ymin, xmin, ymax, xmax]`` -> numpy ``[xmin, ymin, xmax, ymax]``
    (the inverse of `export_outputs`, for readers of exported detections)."""
    import numpy as np

    return np.asarray(detection_boxes)[..., YXYX]


def decoder_kwargs_from_flags(values):
    return {
        "score_threshold": values.score_threshold,
        "iou_threshold": values.iou_threshold,
        "max_detections": values.max_detections,
        "pre_nms_top_k": values.pre_nms_top_k,
    }


def define_export_flags(output_help: str) -> None:
    """The flags every exporter of a checkpoint takes: ``--checkpoint``, ``--output``
    (``output_help``), ``--class_names``, ``--overwrite`` and the decoder's."""
    from absl import flags

    flags.DEFINE_string("checkpoint", None, "A .keras checkpoint of a Detector.")
    flags.DEFINE_string("output", None, output_help)
    flags.DEFINE_string(
        "class_names", None,
        "Comma-separated class names (default: labels.txt next to the checkpoint).",
    )
    flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
    define_decoder_flags()
    flags.mark_flags_as_required(["checkpoint", "output"])


def define_decoder_flags():
    """The `PostProcessor` flags every export CLI takes (defaults: `DECODER_DEFAULTS`)."""
    from absl import flags

    from keras_scb.postprocess import DECODER_DEFAULTS

    flags.DEFINE_float("score_threshold", DECODER_DEFAULTS["score_threshold"],
                       "Detections below this score are dropped.")
    flags.DEFINE_float("iou_threshold", DECODER_DEFAULTS["iou_threshold"],
                       "Per-class NMS IoU threshold.")
    flags.DEFINE_integer("max_detections", DECODER_DEFAULTS["max_detections"],
                         "Detections kept per image.")
    flags.DEFINE_integer("pre_nms_top_k", DECODER_DEFAULTS["pre_nms_top_k"],
                         "Candidates per class before NMS.")
    from keras_scb import flags as common_flags

    common_flags.between("score_threshold", 0, 1, open_high=True)
    common_flags.between("iou_threshold", 0, 1, open_low=True)
    common_flags.at_least("max_detections", 1)
    common_flags.at_least("pre_nms_top_k", 1)


def export_metadata(detector, class_names, decoder_kwargs, **extra):
    """JSON-able description of an export (read back by `exporters.predict`).

    ``model`` is the registry name (`keras_scb.models.build_detector` takes it
    back); the Keras name only for a detector built outside the registry.
    """
    from keras_scb.anchors import anchor_spec_to_config

    normalization = detector.input_normalization
    return {
        "model": detector.registry_name or detector.name,
        "output_layout": detector.output_layout,
        "image_size": detector.image_size,
        "num_classes": detector.num_classes,
        "class_names": list(class_names) if class_names else None,
        "anchor_spec": anchor_spec_to_config(detector.anchor_spec),
        # Inside the network (the export takes uint8 RGB); recorded to say what
        # the weights were trained with.
        "input_normalization": normalization and dataclasses.asdict(normalization),
        "decoder": dict(decoder_kwargs),
        "outputs": list(DETECTION_KEYS),
        "box_order": "ymin, xmin, ymax, xmax (relative)",
        **extra,
    }


def write_labels(class_names, path):
    """Writes ``labels.txt``: one class name a line, in class-id order (atomically)."""
    write_text("".join(f"{name}\n" for name in class_names), path)

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

import os

# Re-exported: the exporters write through the package's one file-writing module.
from keras_scb.fileio import atomic_output, prepare_output, write_json, write_text  # noqa: F401

DETECTION_KEYS = (
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
)
LABELS_FILE = "labels.txt"
METADATA_FILE = "keras_scb_export.json"


def load_detector(checkpoint):
    """A `keras_scb.models.Detector` from a ``.keras`` file, without its loss.

    ``compile=False``: the loss and optimizer are not deserialised, so nothing
    exported can depend on how the checkpoint was trained.
    """
    from keras_scb.checkpoints import load_checkpoint

    return float32_detector(load_checkpoint(checkpoint))


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


def read_class_names(checkpoint=None, class_names=None):
    """Class names: ``class_names`` if given, else ``labels.txt`` next to ``checkpoint``.

    Args:
        checkpoint: a ``.keras`` file, an exported SavedModel folder or a
            ``.tflite`` file (a SavedModel folder holds its own ``labels.txt``).
        class_names: a sequence of names, or a comma-separated string.

    Returns:
        A tuple of names, or ``None`` when neither is available.
    """
    if isinstance(class_names, str):
        class_names = [name.strip() for name in class_names.split(",")]
    if class_names:
        return tuple(class_names)
    if checkpoint is None:
        return None
    checkpoint = os.fspath(checkpoint)
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    path = os.path.join(folder, LABELS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return tuple(line.strip() for line in f if line.strip())


def check_class_names(class_names, num_classes):
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"{len(class_names)} class names {list(class_names)} for a model "
            f"of {num_classes} classes."
        )


def serving_function(detector, resize=False, single_image=False, **decoder_kwargs):
    """``images uint8 (B, H, W, 3) -> dict of DETECTION_KEYS`` (TensorFlow graph code).

    Args:
        detector: a `keras_scb.models.Detector`.
        resize: resize any ``H x W`` bilinearly to the model's ``S x S`` (the
            aspect ratio is not kept, as in training); otherwise ``H = W = S``.
        single_image: the batch is one image (``B = 1``): decode it without the
            decoder's ``tf.map_fn`` (see `decode_single_image`).
        **decoder_kwargs: `keras_scb.decoding.DetectionDecoder` options.

    The detector is called with ``training=False`` explicitly: without it, a
    nested model behind a ``keras.layers.Resizing`` runs its BatchNorms in
    training mode (measured with Keras 3.15).
    """
    import tensorflow as tf

    from keras_scb.decoding import DetectionDecoder

    size = detector.image_size
    decoder = DetectionDecoder(detector.anchor_spec, name="decode", **decoder_kwargs)

    def detect(images):
        pixels = tf.cast(images, tf.float32)
        if resize:
            pixels = tf.image.resize(pixels, (size, size), method="bilinear")
        predictions, anchors = ssd_predictions(detector, detector(pixels, training=False))
        if single_image:
            decoded = decode_single_image(decoder, predictions, anchors)
        elif anchors is None:
            decoded = decoder(predictions)
        else:
            decoded = decoder(predictions, anchors=anchors)
        return {
            "detection_boxes": decoded["boxes"],
            "detection_classes": tf.cast(decoded["classes"], tf.float32),
            "detection_scores": decoded["scores"],
            "num_detections": tf.cast(decoded["num_detections"], tf.float32),
        }

    return detect


def ssd_predictions(detector, raw):
    """The network output in SSD form, with the anchors to decode it against.

    Args:
        detector: a `keras_scb.models.Detector`.
        raw: its output, SSD's ``(B, A, 4 + C + 1)`` or RefineDet's
            ``(B, A, 10 + C + 1)`` (see `keras_scb.decoding.is_refinedet`).

    Returns:
        ``(predictions (B, A, 4 + C + 1), anchors)``: ``anchors`` is ``None`` (the
        spec's) for SSD, the ARM-refined ``(B, A, 4)`` ``[cx, cy, w, h]`` for
        RefineDet, whose ODM scores of ARM-filtered anchors are zeroed (as
        `keras_scb.decoding.build_inference_model` does).
    """
    from keras_scb.decoding import is_refinedet
    from keras_scb.refinedet_loss import refinedet_to_ssd_outputs

    if not is_refinedet(detector):
        return raw, None
    anchors, predictions = refinedet_to_ssd_outputs(raw, detector.anchors)
    return predictions, anchors


def decode_single_image(decoder, predictions, anchors=None):
    """``decoder(predictions)`` for a batch of one, without ``tf.map_fn``.

    The ``WHILE`` op that ``tf.map_fn`` becomes in TFLite crashes TF 2.21's int8
    calibrator (segmentation fault), and a loop of one iteration is useless in
    a batch-1 mobile model. The parity tests hold this to the Keras decoder.

    Args:
        decoder: a `keras_scb.decoding.DetectionDecoder` (its settings are used).
        predictions: ``(1, A, 4 + C + 1)``.
        anchors: ``(1, A, 4)`` ``[cx, cy, w, h]``, or ``None`` for the decoder's.

    Returns:
        The decoder's output dict, batch 1.
    """
    import tensorflow as tf

    from keras_scb import decoding
    from keras_scb.anchors import get_anchors
    from keras_scb.matching import decode_boxes

    anchors = get_anchors(decoder.anchor_spec) if anchors is None else anchors[0]
    corners = decode_boxes(predictions[0, :, :4], anchors, decoder.variances)
    # (A, 4) [xmin, ymin, xmax, ymax]
    boxes = tf.clip_by_value(tf.gather(corners, [1, 0, 3, 2], axis=-1), 0.0, 1.0)
    probs = tf.nn.softmax(predictions[0, :, 4:], axis=-1)
    outputs = decoding.nms_one_image(
        probs, boxes, decoder.iou_threshold, decoder.score_threshold,
        decoder.max_detections, decoder.pre_nms_top_k,
    )
    return dict(zip(("boxes", "scores", "classes", "num_detections"), (o[None] for o in outputs)))


def decoder_kwargs_from_flags(values):
    return {
        "score_threshold": values.score_threshold,
        "iou_threshold": values.iou_threshold,
        "max_detections": values.max_detections,
        "pre_nms_top_k": values.pre_nms_top_k,
    }


def define_decoder_flags():
    """The `DetectionDecoder` flags every export CLI takes (defaults: the SSD paper's)."""
    from absl import flags

    flags.DEFINE_float("score_threshold", 0.01, "Detections below this score are dropped.")
    flags.DEFINE_float("iou_threshold", 0.45, "Per-class NMS IoU threshold.")
    flags.DEFINE_integer("max_detections", 200, "Detections kept per image.")
    flags.DEFINE_integer("pre_nms_top_k", 400, "Candidates per class before NMS.")


def export_metadata(detector, class_names, decoder_kwargs, **extra):
    """JSON-able description of an export (read back by `keras_scb.predict`)."""
    from keras_scb.models.detector import anchor_spec_to_config

    return {
        "model": detector.name,
        "image_size": detector.image_size,
        "num_classes": detector.num_classes,
        "class_names": list(class_names) if class_names else None,
        "anchor_spec": anchor_spec_to_config(detector.anchor_spec),
        "decoder": dict(decoder_kwargs),
        "outputs": list(DETECTION_KEYS),
        "box_order": "ymin, xmin, ymax, xmax (relative)",
        **extra,
    }


def write_labels(class_names, path):
    """Writes ``labels.txt``: one class name a line, in class-id order (atomically)."""
    write_text("".join(f"{name}\n" for name in class_names), path)

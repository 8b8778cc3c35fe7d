"""Post-processing: a detector's raw output -> boxes, scores and classes after NMS.

The TF inference path of the library: evaluation (`keras_scb.validation`), the
SavedModel and TFLite exports and ``exporters.predict`` decode with
`PostProcessor`, built for a detector by `build_postprocessor` (its anchors and
output layout, the `DECODER_DEFAULTS` unless overridden). Its decoding is
`keras_scb.decoding.decode_anchor_outputs`; `keras_scb.decoding.DetectionDecoder`
is the same post-processing in ``keras.ops`` (any backend: `Detector.predict`
and the Keras inference model `build_inference_model` use it).

TensorFlow only (runs under the TensorFlow backend, or as ``tf.function`` of
``PostProcessor.call`` on the output of any backend; called on JAX tracers inside
a JAX-backend Keras model, its TF ops fail). NMS is TF's
``NonMaxSuppressionV4`` with padded output, which converts to a TFLite builtin;
``combined_non_max_suppression`` and keras-cv's NMS would need Flex ops.

Output, for ``K = max_detections``:

- ``boxes``: float32 ``(B, K, 4)`` relative ``[xmin, ymin, xmax, ymax]`` (the
  library's box layout; the exports swap it once, to the TF Object Detection
  API's ``[ymin, xmin, ymax, xmax]``, in `exporters.common.export_outputs`),
  clipped to ``[0, 1]``;
- ``scores``: float32 ``(B, K)`` softmax probabilities, descending;
- ``classes``: int32 ``(B, K)`` foreground class ids ``0..C-1``;
- ``num_detections``: int32 ``(B,)``; rows ``>= num_detections`` are zeros.

With ``extra_outputs=True`` (the TF Object Detection API's extra fields, for the
SavedModel), also, for ``A`` anchors:

- ``anchor_indices``: int32 ``(B, K)`` the anchor each detection comes from (rows
  past ``num_detections``: 0);
- ``multiclass_scores``: float32 ``(B, K, C + 1)`` that anchor's probabilities,
  background at 0 (rows past ``num_detections``: zeros);
- ``raw_boxes``: float32 ``(B, A, 4)`` every anchor's decoded box, clipped,
  ``[xmin, ymin, xmax, ymax]`` (what the NMS sees);
- ``raw_scores``: float32 ``(B, A, C + 1)`` every anchor's probabilities, background
  at 0 (RefineDet: background 1 for the anchors its ARM filters out).
"""

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_scb.box_coding import tf_ops
from keras_scb.decoding import (  # noqa: F401  (DECODER_DEFAULTS re-exported)
    DECODER_DEFAULTS,
    OUTPUT_KEYS,
    DetectionDecoder,
    detection_specs,
)
from keras_scb.output_layout import REFINEDET

EXTRA_OUTPUT_KEYS = ("anchor_indices", "multiclass_scores", "raw_boxes", "raw_scores")


def nms_one_image(
    probs: tf.Tensor,
    boxes: tf.Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
    pre_nms_top_k: int,
):
    """Per-class NMS of one image.

    Args:
        probs: ``(A, C + 1)`` class probabilities, background at 0.
        boxes: ``(A, 4)`` corners in ``[0, 1]`` (either coordinate order: NMS
            only compares boxes with each other).

    Returns:
        ``(boxes (K, 4), scores (K,), classes (K,) int32, num_detections (),
        anchor_indices (K,) int32)``; rows past ``num_detections`` are zeros.
    """
    num_anchors = probs.shape[0]
    num_classes = probs.shape[1] - 1
    top_k = min(pre_nms_top_k, num_anchors)
    # (C, top_k) best candidates of each class, as Caffe's per-class top_k.
    scores, indices = tf.math.top_k(tf.transpose(probs[:, 1:]), k=top_k)
    candidates = tf.gather(boxes, indices)  # (C, top_k, 4)
    classes = tf.broadcast_to(
        tf.range(num_classes, dtype=tf.int32)[:, None], [num_classes, top_k]
    )
    # Shifting each class's boxes by 2 * class id (boxes lie in [0, 1]) makes
    # boxes of different classes disjoint, so one NMS over all candidates is
    # per-class NMS followed by a global top-K by score.
    shift = 2.0 * tf.cast(classes, tf.float32)[..., None]
    scores = tf.reshape(scores, [-1])
    selected, count = tf.raw_ops.NonMaxSuppressionV4(
        boxes=tf.reshape(candidates + shift, [-1, 4]),
        scores=scores,
        max_output_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_to_max_output_size=True,
    )
    valid = tf.range(max_detections) < count
    candidates = tf.reshape(candidates, [-1, 4])
    return (
        tf.where(valid[:, None], tf.gather(candidates, selected), 0.0),
        tf.where(valid, tf.gather(scores, selected), 0.0),
        tf.where(valid, tf.gather(tf.reshape(classes, [-1]), selected), 0),
        count,
        tf.where(valid, tf.gather(tf.reshape(indices, [-1]), selected), 0),
    )


@keras.saving.register_keras_serializable(package="keras_scb")
class PostProcessor(DetectionDecoder):
    """Raw detector output ``(B, A, D)`` -> NMS'd detections (TF backend only).

    `keras_scb.decoding.DetectionDecoder`'s decoding (its options and config),
    run with TF ops, then TF's ``NonMaxSuppressionV4`` per image
    (`nms_one_image`): for the ``"refinedet"`` layout, first refines the anchors
    with the ARM offsets and zeroes the scores of the anchors the ARM filters
    out (`keras_scb.output_layout.refinedet_to_ssd_outputs`). Then decodes the
    offsets against the (refined) anchors, takes the softmax, keeps per class
    the ``pre_nms_top_k`` best anchors, runs per-class NMS and keeps the
    ``max_detections`` best.

    Args:
        anchor_spec, output_layout, variances, iou_threshold, score_threshold,
            max_detections, pre_nms_top_k, negative_filter_threshold: as
            `keras_scb.decoding.DetectionDecoder`.
        single_image: the batch is one image (``B = 1``): no ``tf.map_fn``. The
            ``WHILE`` op that ``tf.map_fn`` becomes in TFLite crashes TF 2.21's
            int8 calibrator (segmentation fault), and a loop of one iteration
            is useless in a batch-1 mobile model.
        extra_outputs: also return `EXTRA_OUTPUT_KEYS` (module docstring).

    Call: ``raw (B, A, D)`` -> dict described in the module docstring.
    """

    def __init__(self, *args, single_image: bool = False, extra_outputs: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.single_image = single_image
        self.extra_outputs = extra_outputs

    def decode(self, raw):
        """`DetectionDecoder.decode` in TF ops (the first half of `call`)."""
        return super().decode(raw, tf_ops())

    def call(self, raw):
        if not (tf.is_tensor(raw) or isinstance(raw, np.ndarray)):
            # A JAX tracer (a JAX-backend Keras model): tf.cast converts it through
            # __array__, JAX raises TracerArrayConversionError, and Keras's
            # traceback filtering re-creates that error from a str, which fails in
            # its __init__ ("'str' object has no attribute '_error_repr'").
            raise TypeError(
                f"PostProcessor runs TensorFlow ops and got a {type(raw).__name__} "
                f"(Keras backend {keras.backend.backend()!r}): decode with "
                "keras_scb.decoding.DetectionDecoder, or decode_function on numpy outputs."
            )
        boxes, probs = self.decode(raw)
        options = (
            self.iou_threshold, self.score_threshold, self.max_detections, self.pre_nms_top_k
        )
        if self.single_image:
            outputs = [o[None] for o in nms_one_image(probs[0], boxes[0], *options)]
        else:
            k = self.max_detections
            outputs = tf.map_fn(
                lambda args: nms_one_image(args[0], args[1], *options),
                (probs, boxes),
                fn_output_signature=(
                    tf.TensorSpec([k, 4], tf.float32),
                    tf.TensorSpec([k], tf.float32),
                    tf.TensorSpec([k], tf.int32),
                    tf.TensorSpec([], tf.int32),
                    tf.TensorSpec([k], tf.int32),
                ),
            )
        detections = dict(zip(OUTPUT_KEYS, outputs))
        if not self.extra_outputs:
            return detections
        anchor_indices = outputs[4]
        valid = tf.range(self.max_detections) < detections["num_detections"][:, None]
        multiclass = tf.gather(probs, anchor_indices, batch_dims=1)  # (B, K, C + 1)
        return {
            **detections,
            "anchor_indices": anchor_indices,
            "multiclass_scores": tf.where(valid[..., None], multiclass, 0.0),
            "raw_boxes": boxes,
            "raw_scores": probs,
        }

    def compute_output_spec(self, raw):
        batch, num_anchors, k = raw.shape[0], raw.shape[1], self.max_detections
        spec = detection_specs(batch, k)
        if self.extra_outputs:
            width = raw.shape[2] - (10 if self.output_layout == REFINEDET else 4)
            spec.update({
                "anchor_indices": keras.KerasTensor((batch, k), "int32"),
                "multiclass_scores": keras.KerasTensor((batch, k, width), "float32"),
                "raw_boxes": keras.KerasTensor((batch, num_anchors, 4), "float32"),
                "raw_scores": keras.KerasTensor((batch, num_anchors, width), "float32"),
            })
        return spec

    def get_config(self):
        return {
            **super().get_config(),
            "single_image": self.single_image,
            "extra_outputs": self.extra_outputs,
        }


def build_postprocessor(detector: Any, **options) -> PostProcessor:
    """The `PostProcessor` of ``detector`` (its anchors and output layout).

    Args:
        detector: a `keras_scb.models.Detector`.
        **options: `PostProcessor` options (thresholds, ``max_detections``,
            ``single_image``...); the rest are `DECODER_DEFAULTS`.
    """
    return PostProcessor(
        detector.anchor_spec, output_layout=detector.output_layout, **options
    )


def build_inference_model(detector: Any, **options) -> keras.Model:
    """Wraps a detector into ``images of any size -> detections``, any Keras backend.

    Preprocessing: each batch of images ``(B, H, W, 3)`` float RGB in ``[0, 255]``
    (any ``H, W``, same within a batch) is resized bilinearly to ``S x S``
    without keeping the aspect ratio, as in training; relative output boxes
    therefore apply to the original image unchanged.

    Decoding: `keras_scb.decoding.DetectionDecoder` (``keras.ops``, so the model
    predicts, saves and loads under JAX too). Asking for a `PostProcessor`-only
    option (``extra_outputs``, ``single_image``: the exports' TF graph outputs)
    decodes with `PostProcessor` instead, TensorFlow backend only.

    Args:
        detector: a `keras_scb.models.Detector`.
        **options: decoder options (thresholds, ``max_detections``...).

    Returns:
        ``keras.Model`` ``images (B, H, W, 3)`` -> dict of `OUTPUT_KEYS` (module
        docstring; with ``extra_outputs``, also the extra keys).
    """
    size = detector.image_size
    images = keras.Input((None, None, 3), name="images")
    x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(
        images
    )
    # training=False: called on a tensor, a nested model would otherwise run
    # BatchNorm in training mode and overwrite its moving statistics.
    raw = detector(x, training=False)
    if options.get("extra_outputs") or options.get("single_image"):
        decoder = build_postprocessor(detector, name="decode", **options)
    else:
        decoder = DetectionDecoder(
            detector.anchor_spec, output_layout=detector.output_layout, name="decode",
            **options,
        )
    return keras.Model(images, decoder(raw), name=f"{detector.name}_inference")


def decode_function(detector: Any, **options):
    """A ``tf.function`` raw output ``(B, A, D)`` -> `PostProcessor` outputs.

    For decoding outputs computed elsewhere (``predict_on_batch`` under any
    Keras backend): runs ``PostProcessor.call`` as TF graph code, outside Keras.
    """
    return tf.function(build_postprocessor(detector, **options).call)

"""Inference: raw detector output -> boxes, scores and classes after NMS.

TensorFlow only (runs under the TensorFlow backend). NMS is TF's
``NonMaxSuppressionV4`` with padded output, which converts to a TFLite builtin;
``combined_non_max_suppression`` and keras-cv's NMS would need Flex ops.

Output of `DetectionDecoder` and of `build_inference_model`, for ``K =
max_detections``:

- ``boxes``: float32 ``(B, K, 4)`` relative ``[ymin, xmin, ymax, xmax]`` (the TF /
  TFLite detection convention, unlike the ``[xmin, ymin, xmax, ymax]`` used for
  training data), clipped to ``[0, 1]``;
- ``scores``: float32 ``(B, K)`` softmax probabilities, descending;
- ``classes``: int32 ``(B, K)`` foreground class ids ``0..C-1``;
- ``num_detections``: int32 ``(B,)``; rows ``>= num_detections`` are zeros.
"""

import keras
import tensorflow as tf

from keras_scb.anchors import get_anchors
from keras_scb.matching import decode_boxes
from keras_scb.models.detector import anchor_spec_from_config, anchor_spec_to_config


def nms_one_image(
    probs, boxes, iou_threshold, score_threshold, max_detections, pre_nms_top_k
):
    """Per-class NMS of one image.

    Args:
        probs: ``(A, C + 1)`` class probabilities, background at 0.
        boxes: ``(A, 4)`` ``[ymin, xmin, ymax, xmax]`` in ``[0, 1]``.

    Returns:
        ``(boxes (K, 4), scores (K,), classes (K,) int32, num_detections ())``.
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
    )


@keras.saving.register_keras_serializable(package="keras_scb")
class DetectionDecoder(keras.layers.Layer):
    """Raw ``(B, A, 4 + C + 1)`` predictions -> NMS'd detections (TF backend only).

    Decodes the offsets against the anchors, takes the softmax, keeps per class
    the ``pre_nms_top_k`` best anchors, runs per-class NMS and keeps the
    ``max_detections`` best (SSD paper: IoU 0.45, score 0.01, 200 per image).

    Args:
        anchor_spec: preset name, `AnchorSpec` or its config dict.
        variances: the SSD box coding variances.

    Call: ``predictions (B, A, 4 + C + 1)`` -> dict described in the module docstring.
    """

    def __init__(
        self,
        anchor_spec,
        variances=(0.1, 0.2),
        iou_threshold=0.45,
        score_threshold=0.01,
        max_detections=200,
        pre_nms_top_k=400,
        **kwargs,
    ):
        # float32 whatever the global policy: a mixed policy would otherwise
        # cast the offsets and logits to 16 bits before `call`.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.anchor_spec = anchor_spec_from_config(anchor_spec)
        self.variances = tuple(variances)
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.pre_nms_top_k = pre_nms_top_k

    def call(self, predictions, anchors=None):
        """``anchors``: optional per-image ``(B, A, 4)`` ``[cx, cy, w, h]`` (RefineDet's
        refined anchors) replacing the spec's."""
        predictions = tf.cast(predictions, tf.float32)
        if anchors is None:
            anchors = get_anchors(self.anchor_spec)
        corners = decode_boxes(
            predictions[..., :4], anchors, self.variances
        )  # (B, A, 4) [xmin, ymin, xmax, ymax]
        boxes = tf.clip_by_value(tf.gather(corners, [1, 0, 3, 2], axis=-1), 0.0, 1.0)
        probs = tf.nn.softmax(predictions[..., 4:], axis=-1)
        k = self.max_detections
        boxes, scores, classes, count = tf.map_fn(
            lambda args: nms_one_image(
                args[0], args[1], self.iou_threshold, self.score_threshold,
                k, self.pre_nms_top_k,
            ),
            (probs, boxes),
            fn_output_signature=(
                tf.TensorSpec([k, 4], tf.float32),
                tf.TensorSpec([k], tf.float32),
                tf.TensorSpec([k], tf.int32),
                tf.TensorSpec([], tf.int32),
            ),
        )
        return {
            "boxes": boxes,
            "scores": scores,
            "classes": classes,
            "num_detections": count,
        }

    def compute_output_spec(self, predictions, anchors=None):
        batch, k = predictions.shape[0], self.max_detections
        return {
            "boxes": keras.KerasTensor((batch, k, 4), "float32"),
            "scores": keras.KerasTensor((batch, k), "float32"),
            "classes": keras.KerasTensor((batch, k), "int32"),
            "num_detections": keras.KerasTensor((batch,), "int32"),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "anchor_spec": anchor_spec_to_config(self.anchor_spec),
            "variances": self.variances,
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
            "pre_nms_top_k": self.pre_nms_top_k,
        }


def build_inference_model(detector, **decoder_kwargs):
    """Wraps a detector into ``images of any size -> detections``.

    Preprocessing: each batch of images ``(B, H, W, 3)`` float RGB in ``[0, 255]``
    (any ``H, W``, same within a batch) is resized bilinearly to ``S x S``
    without keeping the aspect ratio, as in training; relative output boxes
    therefore apply to the original image unchanged.

    Args:
        detector: a `keras_scb.models.Detector`.
        **decoder_kwargs: `DetectionDecoder` options (thresholds, ``max_detections``...).

    Returns:
        ``keras.Model`` ``images (B, H, W, 3)`` -> dict of `DetectionDecoder` outputs.
    """
    size = detector.image_size
    images = keras.Input((None, None, 3), name="images")
    x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(
        images
    )
    decoder = DetectionDecoder(detector.anchor_spec, name="decode", **decoder_kwargs)
    # training=False: called on a tensor, a nested model would otherwise run
    # BatchNorm in training mode and overwrite its moving statistics.
    raw = detector(x, training=False)
    if is_refinedet(detector):
        anchors, odm = RefineDetRefinement(detector.anchor_spec, name="refine")(raw)
        detections = decoder(odm, anchors=anchors)
    else:
        detections = decoder(raw)
    return keras.Model(images, detections, name=f"{detector.name}_inference")


def is_refinedet(detector):
    """Whether ``detector`` outputs RefineDet's ``(B, A, 10 + C + 1)`` layout
    (ARM and ODM) rather than SSD's ``(B, A, 4 + C + 1)``."""
    return detector.outputs[0].shape[-1] == detector.num_classes + 11


@keras.saving.register_keras_serializable(package="keras_scb")
class RefineDetRefinement(keras.layers.Layer):
    """RefineDet ``(B, A, 10 + C + 1)`` -> ``(refined anchors (B, A, 4), odm (B, A, 4 + C + 1))``.

    The ARM offsets refine the spec's anchors; anchors the ARM calls background
    (probability > 0.99) get zero foreground scores. See
    `keras_scb.refinedet_loss.refinedet_to_ssd_outputs`.
    """

    def __init__(self, anchor_spec, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.anchor_spec = anchor_spec_from_config(anchor_spec)

    def call(self, raw):
        from keras_scb.refinedet_loss import refinedet_to_ssd_outputs

        return refinedet_to_ssd_outputs(raw, get_anchors(self.anchor_spec))

    def compute_output_spec(self, raw):
        batch, num_anchors, depth = raw.shape
        return (
            keras.KerasTensor((batch, num_anchors, 4), "float32"),
            keras.KerasTensor((batch, num_anchors, depth - 6), "float32"),
        )

    def get_config(self):
        return {**super().get_config(), "anchor_spec": anchor_spec_to_config(self.anchor_spec)}


def raw_output_decoder(detector, **decoder_kwargs):
    """A ``tf.function`` raw network output ``(B, A, D)`` -> detections dict.

    For decoding outputs computed elsewhere (``predict`` under any backend);
    handles SSD-style and RefineDet outputs.
    """
    decoder = DetectionDecoder(detector.anchor_spec, **decoder_kwargs)
    refine = RefineDetRefinement(detector.anchor_spec) if is_refinedet(detector) else None

    @tf.function
    def decode(raw):
        if refine is None:
            return decoder.call(raw)
        anchors, odm = refine.call(raw)
        return decoder.call(odm, anchors=anchors)

    return decode

"""Raw detector output -> detections after NMS, in ``keras.ops`` (any backend, jittable).

The backend-neutral twin of `keras_scb.postprocess.PostProcessor`: the same
decoding (`decode_anchor_outputs`, which both run, the TF one through
`keras_scb.box_coding.tf_ops`) and the same per-class NMS, written with
``keras.ops`` and static shapes, so that it runs inside a jitted JAX (or TF)
predict step: `Detector.predict` and `keras_scb.postprocess.build_inference_model`
decode with it. The SavedModel / TFLite exports keep `PostProcessor`, whose TF
``NonMaxSuppressionV4`` converts to a TFLite builtin op.

The NMS follows TF's ``NonMaxSuppressionV4`` as `keras_scb.postprocess.nms_one_image`
runs it: per class, the ``pre_nms_top_k`` best anchors; candidates with a score
above ``score_threshold``, taken greedily in descending score, each dropping
the later candidates of its class whose IoU with it is above ``iou_threshold``
(IoU 0 when a box has no area); then the ``max_detections`` best survivors of
all classes. The greedy pass is a ``fori_loop`` over the ``pre_nms_top_k``
candidate ranks, every class and image at once.
"""

from typing import Any, Optional, Sequence

import keras
from keras import ops

from keras_scb.anchors import anchor_spec_from_config, anchor_spec_to_config, get_anchors
from keras_scb.box_coding import VARIANCES, decode_offsets
from keras_scb.output_layout import (
    NEGATIVE_FILTER_THRESHOLD,
    REFINEDET,
    SSD,
    check_layout,
    refinedet_to_ssd_outputs,
)

Tensor = Any

# The SSD paper's: per-class NMS at IoU 0.45, scores from 0.01, 200 detections an
# image, 400 candidates a class before NMS (Caffe's ``nms_param.top_k``).
DECODER_DEFAULTS = dict(
    iou_threshold=0.45, score_threshold=0.01, max_detections=200, pre_nms_top_k=400
)
OUTPUT_KEYS = ("boxes", "scores", "classes", "num_detections")


def decode_anchor_outputs(
    raw: Tensor,
    anchors: Tensor,
    output_layout: str = SSD,
    variances: Sequence[float] = VARIANCES,
    negative_filter_threshold: float = NEGATIVE_FILTER_THRESHOLD,
    ops: Optional[Any] = None,
) -> tuple[Tensor, Tensor]:
    """Every anchor's box and class probabilities, before NMS.

    For the ``"refinedet"`` layout, first refines the anchors with the ARM
    offsets and zeroes the foreground of the anchors the ARM filters out
    (`keras_scb.output_layout.refinedet_to_ssd_outputs`).

    Args:
        raw: ``(B, A, D)`` detector output (`keras_scb.output_layout`).
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.
        ops: ``keras.ops`` (default) or `keras_scb.box_coding.tf_ops()`.

    Returns:
        ``(boxes, probs)``: float32 ``(B, A, 4)`` relative ``[xmin, ymin, xmax,
        ymax]`` clipped to ``[0, 1]``, and ``(B, A, C + 1)`` softmax
        probabilities, background at 0.
    """
    if ops is None:
        ops = keras.ops
    raw = ops.cast(raw, "float32")
    if output_layout == REFINEDET:
        anchors, raw = refinedet_to_ssd_outputs(
            raw, anchors, variances, negative_filter_threshold, ops
        )  # anchors: (B, A, 4) refined
    corners = decode_offsets(raw[..., :4], anchors, variances, ops)
    return ops.clip(corners, 0.0, 1.0), ops.softmax(raw[..., 4:], axis=-1)


def _iou_with(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of ``box (..., 4)`` with each of ``boxes (..., K, 4)`` -> ``(..., K)``;
    0 where either box has no area (TF's NMS)."""
    box = ops.expand_dims(box, -2)
    lo = ops.maximum(box[..., :2], boxes[..., :2])
    hi = ops.minimum(box[..., 2:], boxes[..., 2:])
    wh = ops.maximum(hi - lo, 0.0)
    intersection = wh[..., 0] * wh[..., 1]
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    union = area + areas - intersection
    has_area = ops.logical_and(area > 0.0, areas > 0.0)
    return ops.where(has_area, intersection / ops.where(has_area, union, 1.0), 0.0)


def per_class_nms(
    probs: Tensor,
    boxes: Tensor,
    iou_threshold: float = DECODER_DEFAULTS["iou_threshold"],
    score_threshold: float = DECODER_DEFAULTS["score_threshold"],
    max_detections: int = DECODER_DEFAULTS["max_detections"],
    pre_nms_top_k: int = DECODER_DEFAULTS["pre_nms_top_k"],
) -> dict:
    """Per-class NMS of a batch (module docstring), static shapes.

    Args:
        probs: ``(B, A, C + 1)`` class probabilities, background at 0.
        boxes: ``(B, A, 4)`` relative ``[xmin, ymin, xmax, ymax]``.

    Returns:
        dict of `OUTPUT_KEYS`, for ``K = max_detections``: ``boxes`` float32
        ``(B, K, 4)`` (the input layout), ``scores`` ``(B, K)`` descending,
        ``classes`` int32 ``(B, K)`` ``0..C-1``, ``num_detections`` int32 ``(B,)``;
        rows past ``num_detections`` are zeros.
    """
    num_anchors, num_classes = probs.shape[1], probs.shape[2] - 1
    top_k = min(pre_nms_top_k, num_anchors)
    # (B, C, top_k) best candidates of each class, as Caffe's per-class top_k.
    scores, indices = ops.top_k(ops.transpose(probs[..., 1:], (0, 2, 1)), top_k)
    candidates = ops.take_along_axis(
        ops.expand_dims(boxes, 1), ops.expand_dims(indices, -1), axis=2
    )  # (B, C, top_k, 4)
    ranks = ops.arange(top_k)

    def suppress(rank, keep):
        box = ops.take(candidates, rank, axis=2)  # (B, C, 4)
        overlaps = _iou_with(box, candidates) > iou_threshold  # (B, C, top_k)
        kept = ops.expand_dims(ops.take(keep, rank, axis=2), -1)
        dropped = ops.logical_and(ops.logical_and(kept, overlaps), ranks > rank)
        return ops.logical_and(keep, ops.logical_not(dropped))

    keep = ops.fori_loop(0, top_k, suppress, scores > score_threshold)
    # The max_detections best survivors over all classes; -1 marks the dropped
    # (probabilities are >= 0).
    flat_scores = ops.reshape(ops.where(keep, scores, -1.0), (-1, num_classes * top_k))
    count = min(max_detections, num_classes * top_k)
    best, order = ops.top_k(flat_scores, count)
    valid = best > -1.0
    flat_boxes = ops.reshape(candidates, (-1, num_classes * top_k, 4))
    out_boxes = ops.take_along_axis(flat_boxes, ops.expand_dims(order, -1), axis=1)
    padding = [[0, 0], [0, max_detections - count]]
    return {
        "boxes": ops.pad(
            ops.where(ops.expand_dims(valid, -1), out_boxes, 0.0), padding + [[0, 0]]
        ),
        "scores": ops.pad(ops.where(valid, best, 0.0), padding),
        "classes": ops.pad(ops.where(valid, ops.cast(order // top_k, "int32"), 0), padding),
        "num_detections": ops.sum(ops.cast(valid, "int32"), axis=1),
    }


def detection_specs(batch: Optional[int], max_detections: int) -> dict:
    """``keras.KerasTensor`` specs of the `OUTPUT_KEYS` (a decoder's ``compute_output_spec``)."""
    k = max_detections
    return {
        "boxes": keras.KerasTensor((batch, k, 4), "float32"),
        "scores": keras.KerasTensor((batch, k), "float32"),
        "classes": keras.KerasTensor((batch, k), "int32"),
        "num_detections": keras.KerasTensor((batch,), "int32"),
    }


@keras.saving.register_keras_serializable(package="keras_scb")
class DetectionDecoder(keras.layers.Layer):
    """Raw detector output ``(B, A, D)`` -> NMS'd detections, any Keras backend.

    `decode_anchor_outputs` then `per_class_nms`; the same options and outputs
    as `keras_scb.postprocess.PostProcessor` (batch mode, no extra outputs).

    Args:
        anchor_spec: preset name, `AnchorSpec` or its config dict.
        output_layout: ``"ssd"`` or ``"refinedet"``.
        variances, negative_filter_threshold, iou_threshold, score_threshold,
            max_detections, pre_nms_top_k: as `PostProcessor`.

    Call: ``raw (B, A, D)`` -> dict of `OUTPUT_KEYS` (`per_class_nms`).
    """

    def __init__(
        self,
        anchor_spec,
        output_layout: str = SSD,
        variances: Sequence[float] = VARIANCES,
        iou_threshold: float = DECODER_DEFAULTS["iou_threshold"],
        score_threshold: float = DECODER_DEFAULTS["score_threshold"],
        max_detections: int = DECODER_DEFAULTS["max_detections"],
        pre_nms_top_k: int = DECODER_DEFAULTS["pre_nms_top_k"],
        negative_filter_threshold: float = NEGATIVE_FILTER_THRESHOLD,
        **kwargs,
    ):
        # float32 whatever the global policy: a mixed policy would otherwise
        # cast the offsets and logits to 16 bits before `call`.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.anchor_spec = anchor_spec_from_config(anchor_spec)
        self.output_layout = check_layout(output_layout)
        self.variances = tuple(variances)
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.pre_nms_top_k = pre_nms_top_k
        self.negative_filter_threshold = negative_filter_threshold

    def decode(self, raw: Tensor, ops: Optional[Any] = None) -> tuple[Tensor, Tensor]:
        """Every anchor's ``(boxes, probs)`` before NMS (`decode_anchor_outputs`),
        with ``ops`` (default ``keras.ops``)."""
        return decode_anchor_outputs(
            raw, get_anchors(self.anchor_spec), self.output_layout, self.variances,
            self.negative_filter_threshold, ops,
        )

    def call(self, raw: Tensor) -> dict:
        boxes, probs = self.decode(raw)
        return per_class_nms(
            probs, boxes, self.iou_threshold, self.score_threshold,
            self.max_detections, self.pre_nms_top_k,
        )

    def compute_output_spec(self, raw):
        return detection_specs(raw.shape[0], self.max_detections)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "anchor_spec": anchor_spec_to_config(self.anchor_spec),
            "output_layout": self.output_layout,
            "variances": self.variances,
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
            "pre_nms_top_k": self.pre_nms_top_k,
            "negative_filter_threshold": self.negative_filter_threshold,
        }

"""Anchor matching (which ground-truth box each anchor learns, SSD's rule) and
the project's one IoU.

`encode_targets` and `iou` are TensorFlow, so they run inside
``tf.data.Dataset.map`` whatever the Keras backend (the input pipeline always
runs on TensorFlow). Their core (`pairwise_iou`, `argmax_first`,
`match_anchors`, `encode_matches`, `match_and_encode`) is written against a
numpy-like namespace, so that the RefineDet loss can match and encode refined
anchors with ``keras.ops`` under any backend, and evaluation can use the same
IoU in numpy.

Box formats: ground-truth and decoded boxes are relative corners
``[xmin, ymin, xmax, ymax]``; anchors are relative ``[cx, cy, w, h]``
(see `keras_scb.anchors`). The box coding itself (`to_corners`, the offsets,
`tf_ops`) is `keras_scb.box_coding`.
"""

from typing import Any, Sequence

import numpy as np

# Re-exported: the box-coding names callers of the matching use with it.
from keras_scb.box_coding import VARIANCES, encode_offsets, tf_ops, to_corners

# An anchor matches a ground-truth box at IoU >= this (SSD's and RefineDet's 0.5;
# the evaluation's true-positive IoU is `keras_scb.evaluation`'s own concept).
MATCH_IOU = 0.5

# A numpy array, a `keras.ops` tensor or a TF tensor, as the ``ops`` namespace reads.
Tensor = Any

__all__ = [
    "MATCH_IOU",
    "VARIANCES",
    "argmax_first",
    "box_areas",
    "encode_matches",
    "encode_targets",
    "iou",
    "match_and_encode",
    "match_anchors",
    "pairwise_iou",
    "tf_ops",
    "to_corners",
]


def box_areas(boxes: Tensor, ops: Any = np) -> Tensor:
    """``(..., 4)`` corners -> ``(...)`` areas, 0 for degenerate boxes."""
    size = ops.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    return size[..., 0] * size[..., 1]


def pairwise_iou(boxes_a: Tensor, boxes_b: Tensor, ops: Any = np) -> Tensor:
    """Pairwise intersection over union: the one IoU of the project.

    Works in any numpy-like namespace: numpy for evaluation (float64 in, float64
    out), `tf_ops()` inside ``tf.data``, ``keras.ops`` in the losses. The corner
    order may be ``[xmin, ymin, xmax, ymax]`` or ``[ymin, xmin, ymax, xmax]`` as
    long as both arguments use the same one: IoU does not depend on it.

    Args:
        boxes_a: ``(..., N, 4)`` corners.
        boxes_b: ``(..., M, 4)`` corners, same leading dims as ``boxes_a`` (or none).
        ops: numpy (default), ``keras.ops`` or `tf_ops()`.

    Returns:
        ``(..., N, M)``, 0 where the boxes do not overlap or both are degenerate.
    """
    a = ops.expand_dims(boxes_a, -2)
    b = ops.expand_dims(boxes_b, -3)
    lo = ops.maximum(a[..., :2], b[..., :2])
    hi = ops.minimum(a[..., 2:], b[..., 2:])
    wh = ops.maximum(hi - lo, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = (
        ops.expand_dims(box_areas(boxes_a, ops), -1)
        + ops.expand_dims(box_areas(boxes_b, ops), -2)
        - inter
    )
    return inter / ops.maximum(union, 1e-12)


def iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """`pairwise_iou` in TensorFlow float32 (for ``tf.data`` maps).

    Args:
        boxes_a: ``(..., N, 4)`` corners.
        boxes_b: ``(..., M, 4)`` corners, same leading dims as ``boxes_a`` (or none).

    Returns:
        ``(..., N, M)`` float32 tensor.
    """
    import tensorflow as tf

    boxes_a = tf.convert_to_tensor(boxes_a, tf.float32)
    boxes_b = tf.convert_to_tensor(boxes_b, tf.float32)
    return pairwise_iou(boxes_a, boxes_b, tf_ops())


def argmax_first(x: Tensor, axis: int, ops: Any) -> Tensor:
    """Argmax over a non-negative ``axis``, lowest index among exact ties.

    Args:
        x: tensor of any rank.
        axis: non-negative int.
        ops: ``keras.ops`` or `tf_ops()`.

    Returns:
        ``(index, max)``, both with ``axis`` removed.
    """
    n = ops.shape(x)[axis]
    best = ops.max(x, axis=axis)
    positions = ops.cast(ops.arange(n), "int32")
    positions = _trailing_axes(positions, len(x.shape) - 1 - axis, ops)
    candidates = ops.where(x == ops.expand_dims(best, axis), positions, n)
    return ops.min(candidates, axis=axis), best


def _trailing_axes(x, count, ops):
    """Appends ``count`` unit axes so a 1-D ``x`` broadcasts along an inner axis."""
    for _ in range(count):
        x = ops.expand_dims(x, -1)
    return x


def match_anchors(gt_boxes: Tensor, gt_classes: Tensor, anchor_corners: Tensor,
                  iou_threshold: float, ops: Any) -> Tensor:
    """Assigns each anchor a ground-truth box by the SSD authors' rule.

    Each anchor takes its best box if their IoU is >= ``iou_threshold``; then each
    real box, in index order, takes its single best anchor whatever the IoU (a
    later box overwrites an earlier one). Ties go to the lowest index. Padding rows
    (class < 0) never match.

    Args:
        gt_boxes: ``(B, G, 4)`` float32 corners.
        gt_classes: ``(B, G)`` int32, ``-1`` for padding.
        anchor_corners: ``(A, 4)`` or ``(B, A, 4)`` float32 corners.
        iou_threshold: Python float.
        ops: ``keras.ops`` or `tf_ops()`.

    Returns:
        ``(B, A)`` int32 index of the matched box, ``-1`` for background.
    """
    valid = gt_classes >= 0  # (B, G)
    overlaps = pairwise_iou(gt_boxes, anchor_corners, ops)  # (B, G, A)
    overlaps = ops.where(ops.expand_dims(valid, -1), overlaps, -1.0)
    best_gt, best_gt_iou = argmax_first(overlaps, 1, ops)  # (B, A)
    forced = forced_best_anchor(overlaps, valid, ops)
    matched = ops.where(best_gt_iou >= iou_threshold, best_gt, -1)
    return ops.where(forced >= 0, forced, matched)


def forced_best_anchor(overlaps, valid, ops):
    """The forced best-anchor match of the SSD authors' matcher.

    Each valid box, in index order, claims its single best anchor (ties to the
    lowest anchor index) whatever the IoU; a later box overwrites an earlier one
    that claimed the same anchor, as in the authors' sequential loop. This is
    what leaves no box without a positive anchor (also used by
    `keras_scb.integrations.keras_hub` on RetinaNet's matcher).

    Args:
        overlaps: ``(B, G, A)`` float32 IoU of every box with every anchor.
        valid: ``(B, G)`` bool, False for padding rows (they claim nothing).
        ops: ``keras.ops`` or `tf_ops()`.

    Returns:
        ``(B, A)`` int32: the box that claimed each anchor, ``-1`` where none did.
    """
    best_anchor, _ = argmax_first(overlaps, 2, ops)  # (B, G)
    num_anchors = ops.shape(overlaps)[2]
    num_gt = ops.shape(overlaps)[1]
    # forced[b, a] = 1 + the highest box index whose best anchor is a, else 0:
    # the highest index wins.
    one_hot = ops.one_hot(best_anchor, num_anchors)  # (B, G, A)
    box_ids = ops.cast(ops.arange(num_gt), "float32") + 1.0
    weighted = one_hot * _trailing_axes(box_ids, 1, ops)
    weighted = weighted * ops.expand_dims(ops.cast(valid, "float32"), -1)
    return ops.cast(ops.max(weighted, axis=1), "int32") - 1  # (B, A)


def encode_matches(gt_boxes: Tensor, gt_classes: Tensor, anchors: Tensor, matched: Tensor,
                   variances: Sequence[float], ops: Any) -> Tensor:
    """Builds the ``(B, A, 6)`` target tensor from a matching.

    Args:
        gt_boxes: ``(B, G, 4)`` corners.
        gt_classes: ``(B, G)`` int32.
        anchors: ``(A, 4)`` or ``(B, A, 4)`` ``[cx, cy, w, h]``.
        matched: ``(B, A)`` int32 from `match_anchors`.
        variances: pair of floats.
        ops: ``keras.ops`` or `tf_ops()`.

    Returns:
        ``(B, A, 6)`` float32 ``[dcx, dcy, dw, dh, class_target, matched_gt]``:
        offsets are zero and class_target is 0 on background anchors.
    """
    positive = matched >= 0
    index = ops.maximum(matched, 0)
    boxes = ops.take_along_axis(gt_boxes, ops.expand_dims(index, -1), 1)
    classes = ops.take_along_axis(gt_classes, index, 1)
    offsets = encode_offsets(boxes, anchors, variances, ops)
    offsets = ops.where(ops.expand_dims(positive, -1), offsets, 0.0)
    class_target = ops.where(positive, classes + 1, 0)
    return ops.concatenate(
        [
            offsets,
            ops.expand_dims(ops.cast(class_target, "float32"), -1),
            ops.expand_dims(ops.cast(matched, "float32"), -1),
        ],
        axis=-1,
    )


def match_and_encode(gt_boxes: Tensor, gt_classes: Tensor, anchors: Tensor,
                     iou_threshold: float, variances: Sequence[float], ops: Any) -> Tensor:
    """`match_anchors` against ``anchors``, then `encode_matches`, in any namespace.

    Args:
        gt_boxes: ``(B, G, 4)`` float32 relative corners.
        gt_classes: ``(B, G)`` int32, ``-1`` for padding.
        anchors: ``(A, 4)`` or ``(B, A, 4)`` float32 relative ``[cx, cy, w, h]``.
        iou_threshold: Python float.
        variances: pair of floats.
        ops: ``keras.ops`` or `tf_ops()`.

    Returns:
        ``(B, A, 6)`` float32 targets, as `encode_matches`.
    """
    matched = match_anchors(
        gt_boxes, gt_classes, to_corners(anchors, ops), iou_threshold, ops
    )
    return encode_matches(gt_boxes, gt_classes, anchors, matched, variances, ops)


def encode_targets(
    gt_boxes: Tensor, gt_classes: Tensor, anchors: Tensor, iou_threshold: float = MATCH_IOU,
    variances: Sequence[float] = VARIANCES,
) -> Tensor:
    """Encodes ground truth against anchors for SSD training.

    Args:
        gt_boxes: float ``(B, G, 4)`` or ``(G, 4)`` relative corners.
        gt_classes: int ``(B, G)`` or ``(G,)``: ids ``0..C-1``, ``-1`` for padding.
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]`` (`keras_scb.anchors.get_anchors`).
        iou_threshold: minimum IoU for an anchor to take a box.
        variances: the SSD scaling of centre and size offsets.

    Returns:
        float32 ``(B, A, 6)`` (or ``(A, 6)`` for one image):
        ``[dcx, dcy, dw, dh, class_target, matched_gt]`` with class_target 0 for
        background and ``k + 1`` for class ``k``, matched_gt the box index or -1.
    """
    import tensorflow as tf

    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_classes = tf.cast(tf.convert_to_tensor(gt_classes), tf.int32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    single = gt_boxes.shape.rank == 2
    if single:
        gt_boxes, gt_classes = gt_boxes[None], gt_classes[None]
    targets = match_and_encode(
        gt_boxes, gt_classes, anchors, iou_threshold, variances, tf_ops()
    )
    return targets[0] if single else targets


def pixel_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Relative corners ``(N, 4)`` -> pixel corners of a ``height x width`` image."""
    return boxes * np.array([width, height, width, height], np.float64)


# Annotated corners lie on a grid of 0.001 px or coarser (VOC: whole pixels; COCO
# JSON: at most 3 decimals). Relative float32 corners times the image size miss
# it by up to ``size * 2**-25`` px, so rounding back to it recovers the annotated
# pixels exactly for images up to 8000 px.
_PIXEL_DECIMALS = 3


def annotated_pixel_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Ground-truth relative corners ``(N, 4)`` -> pixel corners back on the annotation grid."""
    return np.round(pixel_boxes(boxes, height, width), _PIXEL_DECIMALS)


def pixel_box_areas(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Annotated relative corners ``(N, 4)`` -> ``(N,)`` exact pixel areas.

    Sides are rounded to the annotation grid before multiplying, so a VOC box
    of 32x32 pixels has area exactly ``32**2`` whatever the image size (the
    plain product of relative floats and sizes lands either side of it).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    pixels = annotated_pixel_boxes(boxes, height, width)
    # Rounded again: the difference of two grid values is off the grid by an ulp.
    sides = np.round(np.maximum(pixels[:, 2:] - pixels[:, :2], 0.0), _PIXEL_DECIMALS)
    return np.round(sides[:, 0] * sides[:, 1], 2 * _PIXEL_DECIMALS)

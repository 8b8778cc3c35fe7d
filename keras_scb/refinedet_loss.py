"""RefineDet's two-step loss (the ARM refinement itself is `keras_scb.box_coding.refine_anchors`).

RefineDet (Zhang et al. 2018) outputs ``(B, A, 4 + 2 + 4 + C + 1)`` per anchor:
ARM offsets and (background, object) logits, then ODM offsets and ``C + 1``
logits (see `keras_scb.models.refinedet`). The loss is the sum of two SSD
multibox losses (`keras_scb.losses.multibox_loss`), as the authors' Caffe code
(sfzhang15/RefineDet, ``examples/refinedet/VGG16_VOC2007_320.py``: the layers
``arm_loss`` and ``odm_loss``, both ``MultiBoxLossLayer`` with the same
``multibox_loss_param``):

* Matching (`caffe_match_anchors`, Caffe's ``MatchBBox`` with
  ``match_type: PER_PREDICTION``, ``overlap_threshold: 0.5``): greedy bipartite
  matching first, then every other anchor takes its best box at IoU >= 0.5.
* ARM: the ground truth matched to the fixed anchors, every class as "object"
  (``GetGroundTruth`` maps labels >= 2 to 1 when ``num_classes == 2``).
* ODM: the ARM offsets decoded into refined anchors (no gradient through them),
  the ground truth matched to the refined anchors by the same rule, offsets
  encoded against them (``CasRegFindMatches``, ``CasRegEncodeLocPrediction``).
* Negative anchor filtering (``MineHardExamples`` with ``objectness_score:
  0.01``): an unmatched anchor whose ARM object probability is below
  ``1 - negative_filter_threshold`` is not a candidate negative of the ODM.
  Positives are never filtered, and the negative quota is 3 x all positives.
* Each step is normalised by ``max(1, sum over the batch of its positives)``
  (``normalization: VALID``, ``LossLayer::GetNormalizer``); ``loc_weight`` is
  ``(neg_pos_ratio + 1) / 4 = 1``.

Each step has its own object weighting (``arm_weighting``, ``odm_weighting``, any
of `keras_scb.losses.WEIGHTINGS`, applied as `keras_scb.losses.multibox_loss`
applies them); the defaults, SCB on the ARM only, are the SCB paper's RefineDet
setting. ``tests/caffe_refinedet_reference.py`` is a loop transcription of the
Caffe layer that the tests compare this loss with.

Departures from the Caffe code:

* Refined anchor sizes: Caffe's ``DecodeBBox`` does not bound ``exp``; here the
  log size change is clipped to +-ln(1000/16) (torchvision's bound), so that a
  diverging ARM cannot make infinite or zero-size anchors (NaN targets).
* ``neg_overlap`` is not a separate parameter: an unmatched anchor (best IoU
  below ``iou_threshold``) is eligible as a negative, which is Caffe's rule
  when ``neg_overlap == overlap_threshold`` (0.5 in every RefineDet config).
* Normaliser under ``tf.distribute``: the count of positives is summed over the
  replicas (Caffe normalises per GPU), so the loss does not depend on the
  number of replicas.

``keras.ops`` only: it runs under the TensorFlow and JAX backends.
"""

import keras
from keras import ops

from keras_scb.anchors import anchor_spec_from_config, anchor_spec_to_config, get_anchors
from keras_scb.box_coding import VARIANCES, refine_anchors, to_corners
from keras_scb.losses import DetectionLoss, check_options, multibox_loss
from keras_scb.matching import MATCH_IOU, argmax_first, encode_matches, pairwise_iou
from keras_scb.output_layout import NEGATIVE_FILTER_THRESHOLD, split_refinedet_outputs

# Caffe's MatchBBox keeps only overlaps above this as candidate pairs.
_MIN_OVERLAP = 1e-6


def caffe_match_anchors(gt_boxes, gt_classes, anchor_corners, iou_threshold: float = MATCH_IOU):
    """Assigns each anchor a ground-truth box by the RefineDet authors' rule.

    Caffe's ``MatchBBox`` (``src/caffe/util/bbox_util.cpp``) with
    ``PER_PREDICTION``: (1) greedy bipartite matching: repeatedly the pair
    (box, anchor) of highest IoU among unmatched boxes and unmatched anchors
    is matched, ties to the lowest anchor then the lowest box index, pairs of
    IoU <= 1e-6 never; (2) every still unmatched anchor takes its best box
    (lowest index on ties) if their IoU is >= ``iou_threshold``. Unlike the
    ssd.pytorch rule (`keras_scb.matching.match_anchors`), two boxes that share
    a best anchor both get one: the second takes its next best anchor.

    The greedy matching is computed in rounds that each match every locally
    dominant pair (best anchor of its box and best box of its anchor among the
    unmatched ones); with the tie order above this gives exactly the greedy
    result (Preis 1999), in a few rounds rather than one per box.

    Args:
        gt_boxes: ``(B, G, 4)`` float32 corners.
        gt_classes: ``(B, G)`` int32, ``-1`` for padding rows (never matched).
        anchor_corners: ``(A, 4)`` or ``(B, A, 4)`` float32 corners.
        iou_threshold: Python float.

    Returns:
        ``(B, A)`` int32 index of the matched box, ``-1`` for background.
    """
    valid = gt_classes >= 0
    overlaps = pairwise_iou(gt_boxes, anchor_corners, ops)  # (B, G, A)
    num_gt, num_anchors = ops.shape(overlaps)[1], ops.shape(overlaps)[2]
    pairs = ops.logical_and(ops.expand_dims(valid, -1), overlaps > _MIN_OVERLAP)
    overlaps = ops.where(pairs, overlaps, -1.0)
    box_ids = ops.reshape(ops.arange(num_gt, dtype="int32"), (1, -1))

    def unfinished(matched, box_done, progress):
        return progress

    def match_dominant_pairs(matched, box_done, progress):
        free = ops.logical_and(
            ops.expand_dims(ops.logical_not(box_done), -1),
            ops.expand_dims(matched < 0, 1),
        )
        free_overlaps = ops.where(free, overlaps, -1.0)
        best_anchor, best_overlap = argmax_first(free_overlaps, 2, ops)  # (B, G)
        best_box, _ = argmax_first(free_overlaps, 1, ops)  # (B, A)
        dominant = ops.logical_and(
            best_overlap > 0.0,
            ops.take_along_axis(best_box, best_anchor, 1) == box_ids,
        )  # (B, G): box g and its best anchor are matched this round
        one_hot = ops.one_hot(best_anchor, num_anchors) * ops.expand_dims(
            ops.cast(dominant, "float32"), -1
        )  # (B, G, A), at most one 1 per anchor
        new_box = ops.sum(one_hot * ops.cast(ops.expand_dims(box_ids, -1), "float32"), 1)
        newly = ops.sum(one_hot, 1) > 0
        matched = ops.where(newly, ops.cast(new_box, "int32"), matched)
        return matched, ops.logical_or(box_done, dominant), ops.any(dominant)

    batch = ops.shape(overlaps)[0]
    matched, _, _ = ops.while_loop(
        unfinished,
        match_dominant_pairs,
        (
            ops.full((batch, num_anchors), -1, "int32"),
            ops.logical_not(valid),
            ops.convert_to_tensor(True),
        ),
    )
    best_box, best_overlap = argmax_first(overlaps, 1, ops)
    by_threshold = ops.where(best_overlap >= iou_threshold, best_box, -1)
    return ops.where(matched >= 0, matched, by_threshold)


def refinedet_loss(
    y_true,
    y_pred,
    anchors,
    *,
    arm_weighting="scb",
    odm_weighting="uniform",
    alpha=1.0,
    beta=3.0,
    neg_pos_ratio=3,
    apply_to="classification",
    iou_threshold=MATCH_IOU,
    variances=VARIANCES,
    negative_filter_threshold=NEGATIVE_FILTER_THRESHOLD,
    class_weights=None,
):
    """ARM loss + ODM loss; see the module docstring.

    Args:
        y_true: ``(B, G, 5)`` ground truth ``[xmin, ymin, xmax, ymax, class]``,
            relative corners, class ``0..C-1`` or ``-1`` for padding rows.
        y_pred: ``(B, A, 10 + C + 1)`` RefineDet output.
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.
        arm_weighting, odm_weighting: `keras_scb.losses.WEIGHTINGS` entries.
        alpha, beta, neg_pos_ratio, apply_to: as `keras_scb.losses.multibox_loss`
            (shared by both steps).
        negative_filter_threshold: ARM background probability above which an
            unmatched anchor is not a candidate negative of the ODM (Caffe's
            ``objectness_score`` is ``1 -`` this: the anchor is a candidate if
            its object probability is >= 0.01).
        class_weights: optional ``C`` factors on the ODM's positives by class
            (`keras_scb.losses.multibox_loss`); the ARM's one class is unweighted.

    Returns:
        Scalar float32.
    """
    y_true = ops.cast(y_true, "float32")
    boxes = y_true[..., :4]
    classes = ops.cast(y_true[..., 4], "int32")
    anchors = ops.convert_to_tensor(anchors, "float32")
    arm, odm = split_refinedet_outputs(ops.cast(y_pred, "float32"))
    shared = dict(
        alpha=alpha,
        beta=beta,
        neg_pos_ratio=neg_pos_ratio,
        apply_to=apply_to,
        normalization="valid",
    )

    objects = ops.where(classes >= 0, 0, -1)  # every class is "object" (target 1)
    matched = caffe_match_anchors(boxes, objects, to_corners(anchors, ops), iou_threshold)
    arm_true = encode_matches(boxes, objects, anchors, matched, variances, ops)
    arm_loss = multibox_loss(arm_true, arm, weighting=arm_weighting, **shared)

    refined = ops.stop_gradient(refine_anchors(arm[..., :4], anchors, variances))
    matched = caffe_match_anchors(boxes, classes, to_corners(refined, ops), iou_threshold)
    odm_true = encode_matches(boxes, classes, refined, matched, variances, ops)
    # MineHardExamples: `arm_conf_data[... 2 * m + 1] >= objectness_score`, the
    # softmax object probability, tested for unmatched anchors only.
    object_probability = ops.softmax(ops.cast(arm[..., 4:], "float32"), axis=-1)[..., 1]
    candidates = object_probability >= 1.0 - negative_filter_threshold
    odm_loss = multibox_loss(
        odm_true, odm, weighting=odm_weighting, negative_mask=candidates,
        class_weights=class_weights, **shared
    )
    return arm_loss + odm_loss


@keras.saving.register_keras_serializable(package="keras_scb")
class RefineDetLoss(DetectionLoss):
    """Keras loss for RefineDet: ``loss(y_true (B, G, 5), y_pred (B, A, 10 + C + 1))``.

    Args:
        anchor_spec: preset name, `keras_scb.anchors.AnchorSpec` or its config
            dict (the model's ``anchor_spec``).
        arm_weighting, odm_weighting: object weighting of each step; the
            default (SCB on the ARM, uniform on the ODM) is the SCB paper's.
        class_weights: optional factor per foreground class, on the ODM.
        Others: see `refinedet_loss`.
    """

    # What it takes (`keras_scb.data.pipeline` ``targets``): padded ground truth.
    targets = "gt"

    def __init__(
        self,
        anchor_spec,
        arm_weighting="scb",
        odm_weighting="uniform",
        alpha=1.0,
        beta=3.0,
        neg_pos_ratio=3,
        apply_to="classification",
        iou_threshold=MATCH_IOU,
        variances=VARIANCES,
        negative_filter_threshold=NEGATIVE_FILTER_THRESHOLD,
        class_weights=None,
        name="refinedet_loss",
        **kwargs,
    ):
        check_options((arm_weighting, odm_weighting), apply_to)
        super().__init__(neg_pos_ratio, class_weights, name=name, **kwargs)
        self.anchor_spec = anchor_spec_from_config(anchor_spec)
        self.anchors = get_anchors(self.anchor_spec)
        self.arm_weighting = arm_weighting
        self.odm_weighting = odm_weighting
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.apply_to = apply_to
        self.iou_threshold = float(iou_threshold)
        self.variances = tuple(float(v) for v in variances)
        self.negative_filter_threshold = float(negative_filter_threshold)

    def call(self, y_true, y_pred):
        return refinedet_loss(
            y_true,
            y_pred,
            self.anchors,
            arm_weighting=self.arm_weighting,
            odm_weighting=self.odm_weighting,
            alpha=self.alpha,
            beta=self.beta,
            neg_pos_ratio=self.neg_pos_ratio,
            apply_to=self.apply_to,
            iou_threshold=self.iou_threshold,
            variances=self.variances,
            negative_filter_threshold=self.negative_filter_threshold,
            class_weights=self.class_weights,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "anchor_spec": anchor_spec_to_config(self.anchor_spec),
            "arm_weighting": self.arm_weighting,
            "odm_weighting": self.odm_weighting,
            "alpha": self.alpha,
            "beta": self.beta,
            "apply_to": self.apply_to,
            "iou_threshold": self.iou_threshold,
            "variances": self.variances,
            "negative_filter_threshold": self.negative_filter_threshold,
        }

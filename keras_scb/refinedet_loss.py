"""RefineDet's two-step loss, and the ARM anchor refinement shared with inference.

RefineDet (Zhang et al. 2018) outputs ``(B, A, 4 + 2 + 4 + C + 1)`` per anchor:
ARM offsets and (background, object) logits, then ODM offsets and ``C + 1``
logits (see `keras_scb.models.refinedet`). The loss is the sum of two SSD
multibox losses (`keras_scb.losses.multibox_loss`), each normalised by its own
number of positives:

* ARM: the ground truth matched to the fixed anchors, every class as "object".
* ODM: the ARM offsets decoded into refined anchors (no gradient through them),
  the ground truth matched to the refined anchors by the same rule (per image,
  IoU 0.5, forced best anchors), offsets encoded against them. Negative anchor
  filtering: anchors whose ARM background probability exceeds 0.99 are neither
  ODM positives nor ODM negatives, as in the authors' Caffe code.

Each step has its own object weighting (``arm_weighting``, ``odm_weighting``, any
of `keras_scb.losses.WEIGHTINGS`); the defaults, SCB on the ARM only, are the
SCB paper's RefineDet setting.

``keras.ops`` only: it runs under the TensorFlow and JAX backends.
"""


import keras
from keras import ops

from keras_scb.anchors import get_anchors
from keras_scb.losses import check_options, multibox_loss
from keras_scb.matching import _corners, encode_matches, match_anchors
from keras_scb.models.detector import anchor_spec_from_config, anchor_spec_to_config

ARM_DEPTH = 6  # 4 offsets + (background, object) logits
# Bound on the decoded log size change, as torchvision's box decoding: a diverging
# ARM must not make refined anchors of infinite or zero size (NaN targets).
_MAX_LOG_SCALE = 4.135166556742356  # log(1000 / 16)


def split_refinedet_outputs(raw):
    """``(B, A, 10 + C + 1)`` -> ``(arm (B, A, 6), odm (B, A, 4 + C + 1))``."""
    return raw[..., :ARM_DEPTH], raw[..., ARM_DEPTH:]


def refine_anchors(arm_offsets, anchors, variances=(0.1, 0.2)):
    """Applies ARM offsets to the anchors (SSD box decoding, in ``[cx, cy, w, h]``).

    Args:
        arm_offsets: ``(B, A, 4)`` ``[dcx, dcy, dw, dh]``.
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.

    Returns:
        ``(B, A, 4)`` float32 refined anchors ``[cx, cy, w, h]``.
    """
    arm_offsets = ops.cast(arm_offsets, "float32")
    anchors = ops.convert_to_tensor(anchors, "float32")
    centre = anchors[..., :2] + arm_offsets[..., :2] * variances[0] * anchors[..., 2:]
    log_scale = ops.clip(
        arm_offsets[..., 2:] * variances[1], -_MAX_LOG_SCALE, _MAX_LOG_SCALE
    )
    return ops.concatenate([centre, anchors[..., 2:] * ops.exp(log_scale)], axis=-1)


def arm_background_probability(arm):
    """``(B, A, 6)`` ARM output -> ``(B, A)`` softmax probability of background."""
    return ops.softmax(ops.cast(arm[..., 4:], "float32"), axis=-1)[..., 0]


def refinedet_to_ssd_outputs(
    raw, anchors, variances=(0.1, 0.2), negative_filter_threshold=0.99
):
    """RefineDet output -> per-image anchors and SSD-form ODM predictions.

    Anchors filtered out by the ARM (background probability above the
    threshold) get foreground logits of -1e9, so after the softmax their
    foreground scores are 0, as the authors' detection output zeroes them.

    Args:
        raw: ``(B, A, 10 + C + 1)`` model output.
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.

    Returns:
        ``(refined_anchors (B, A, 4) [cx, cy, w, h], odm (B, A, 4 + C + 1))``:
        decode ``odm`` against ``refined_anchors`` as an SSD output.
    """
    arm, odm = split_refinedet_outputs(ops.cast(raw, "float32"))
    refined = refine_anchors(arm[..., :4], anchors, variances)
    filtered = arm_background_probability(arm) > negative_filter_threshold
    foreground = ops.where(ops.expand_dims(filtered, -1), -1e9, odm[..., 5:])
    return refined, ops.concatenate([odm[..., :5], foreground], axis=-1)


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
    iou_threshold=0.5,
    variances=(0.1, 0.2),
    negative_filter_threshold=0.99,
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
            anchor is left out of the ODM loss.

    Returns:
        Scalar float32.
    """
    y_true = ops.cast(y_true, "float32")
    boxes = y_true[..., :4]
    classes = ops.cast(y_true[..., 4], "int32")
    anchors = ops.convert_to_tensor(anchors, "float32")
    arm, odm = split_refinedet_outputs(ops.cast(y_pred, "float32"))
    shared = dict(alpha=alpha, beta=beta, neg_pos_ratio=neg_pos_ratio, apply_to=apply_to)

    objects = ops.where(classes >= 0, 0, -1)  # every class is "object" (target 1)
    matched = match_anchors(boxes, objects, _corners(anchors, ops), iou_threshold, ops)
    arm_true = encode_matches(
        boxes, objects, anchors, matched, variances, ops
    )
    arm_loss = multibox_loss(arm_true, arm, weighting=arm_weighting, **shared)

    refined = ops.stop_gradient(refine_anchors(arm[..., :4], anchors, variances))
    matched = match_anchors(boxes, classes, _corners(refined, ops), iou_threshold, ops)
    odm_true = encode_matches(
        boxes, classes, refined, matched, variances, ops
    )
    kept = arm_background_probability(arm) <= negative_filter_threshold
    odm_loss = multibox_loss(
        odm_true, odm, weighting=odm_weighting, anchor_mask=kept, **shared
    )
    return arm_loss + odm_loss


@keras.saving.register_keras_serializable(package="keras_scb")
class RefineDetLoss(keras.losses.Loss):
    """Keras loss for RefineDet: ``loss(y_true (B, G, 5), y_pred (B, A, 10 + C + 1))``.

    Args:
        anchor_spec: preset name, `keras_scb.anchors.AnchorSpec` or its config
            dict (the model's ``anchor_spec``).
        arm_weighting, odm_weighting: object weighting of each step; the
            default (SCB on the ARM, uniform on the ODM) is the SCB paper's.
        Others: see `refinedet_loss`.
    """

    def __init__(
        self,
        anchor_spec,
        arm_weighting="scb",
        odm_weighting="uniform",
        alpha=1.0,
        beta=3.0,
        neg_pos_ratio=3,
        apply_to="classification",
        iou_threshold=0.5,
        variances=(0.1, 0.2),
        negative_filter_threshold=0.99,
        name="refinedet_loss",
        **kwargs,
    ):
        check_options((arm_weighting, odm_weighting), apply_to)
        super().__init__(name=name, **kwargs)
        self.anchor_spec = anchor_spec_from_config(anchor_spec)
        self.anchors = get_anchors(self.anchor_spec)
        self.arm_weighting = arm_weighting
        self.odm_weighting = odm_weighting
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.neg_pos_ratio = neg_pos_ratio
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
        )

    def get_config(self):
        return {
            **super().get_config(),
            "anchor_spec": anchor_spec_to_config(self.anchor_spec),
            "arm_weighting": self.arm_weighting,
            "odm_weighting": self.odm_weighting,
            "alpha": self.alpha,
            "beta": self.beta,
            "neg_pos_ratio": self.neg_pos_ratio,
            "apply_to": self.apply_to,
            "iou_threshold": self.iou_threshold,
            "variances": self.variances,
            "negative_filter_threshold": self.negative_filter_threshold,
        }

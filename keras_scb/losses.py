"""The SSD multibox loss and the scale-balanced loss (SCB).

SCB (Pattern Recognition 117, 2021) re-weights each ground-truth object ``i`` that
matched ``M_i`` anchors by ``W_i = beta * (ln(M_i) + alpha) / M_i``, so that small
objects, which match few anchors, weigh as much in the loss as large ones.

Default semantics follow the authors' code, not the paper's Eq. 2:

* ``W_i`` multiplies only the classification loss of the positive anchors of box
  ``i`` (``apply_to="classification"``); Eq. 2 weights localisation too, which is
  ``apply_to="both"``. The authors' code is what produced the paper's numbers.
* ``M_i`` is counted per image over the anchors finally assigned to box ``i``
  (after the forced best-anchor matches), natural log.
* Both terms are divided by ``N = sum_b max(P_b, 1)``, the *unweighted* number of
  positive anchors. Under ``tf.distribute``, ``N`` is summed over replicas, so the
  loss and its gradients do not depend on the number of replicas (the authors'
  code normalises per GPU). ``normalization="valid"`` divides by
  ``max(1, sum_b P_b)`` instead, as the Caffe ``MultiBoxLossLayer`` of the
  RefineDet authors (`keras_scb.refinedet_loss`).

Two controls separate SCB's effects (`WEIGHTINGS`): ``"uniform_beta"`` weights
every positive ``beta`` (all positives up, no scale balance), and
``"scb_mean_normalised"`` keeps SCB's balance between objects at MultiBox's total
positive weight (`mean_normalise_per_image`).

``class_weights`` (optional, one per foreground class) multiply the weight of
each positive anchor by its class's factor, on top of the object weighting: the
standard remedy for a rare class (mmdetection's ``class_weight``). Negatives keep
weight 1 and ``N`` stays the unweighted count.

Hard negative mining keeps, per image, the ``min(neg_pos_ratio * P_b, #negatives)``
negatives with the largest cross-entropy; negatives have weight 1. An optional
``negative_mask`` removes anchors from the candidate negatives (RefineDet's
negative anchor filtering), never from the positives.

Written with ``keras.ops`` only: it imports and runs without TensorFlow.
"""

import math
from typing import Sequence

import keras
from keras import ops

# The per-anchor object weights, written once for every detector (SSD, RefineDet,
# keras-hub's RetinaNet); imported here under their old names too.
from keras_scb.anchor_weights import (  # noqa: F401
    WEIGHTINGS,
    Tensor,
    match_count_per_anchor,
    mean_normalise_per_image,
    positive_anchor_weights,
    scale_balanced_weights,
)

APPLY_TO = ("classification", "both")
NORMALIZATIONS = ("per_image", "valid")


def check_options(
    weightings: Sequence[str] = (),
    apply_to: str = "classification",
    neg_pos_ratio: int = 3,
    class_weights: Sequence[float] | None = None,
) -> None:
    """Raises ValueError for an unknown weighting or ``apply_to``, a negative
    ``neg_pos_ratio`` or a class weight that is negative or not finite, naming the
    value. Every loss of the library checks its options here."""
    for value in class_weights or ():
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"class_weights must be finite and >= 0; got {list(class_weights)}."
            )
    for weighting in weightings:
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"Unknown weighting {weighting!r}; expected one of {WEIGHTINGS}."
            )
    if apply_to not in APPLY_TO:
        raise ValueError(f"Unknown apply_to {apply_to!r}; expected one of {APPLY_TO}.")
    if neg_pos_ratio < 0:
        raise ValueError(f"neg_pos_ratio must be >= 0; got {neg_pos_ratio}.")


def _smooth_l1(diff):
    absolute = ops.abs(diff)
    return ops.where(absolute < 1.0, 0.5 * diff * diff, absolute - 0.5)


def _global_sum(value):
    """Sums ``value`` over the replicas of a ``tf.distribute`` strategy, if any."""
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def multibox_loss(
    y_true: Tensor,
    y_pred: Tensor,
    *,
    weighting: str = "scb",
    alpha: float = 1.0,
    beta: float = 3.0,
    neg_pos_ratio: int = 3,
    apply_to: str = "classification",
    negative_mask: Tensor | None = None,
    normalization: str = "per_image",
    class_weights: Sequence[float] | None = None,
) -> Tensor:
    """SSD multibox loss with per-object weights; see the module docstring.

    Args:
        y_true: ``(B, A, 6)`` ``[dcx, dcy, dw, dh, class_target, matched_gt]`` from
            `keras_scb.matching.encode_targets` (class_target 0 is background).
        y_pred: ``(B, A, 4 + C + 1)``: offsets, then logits with background first.
        negative_mask: optional ``(B, A)`` bool; background anchors where it is
            False are not candidate negatives for hard negative mining. Positives
            are not affected (RefineDet's negative anchor filtering: the authors'
            Caffe ``MineHardExamples`` tests the ARM score only for unmatched
            anchors, after counting every positive for the negative quota).
        normalization: ``"per_image"``, ``N = sum_b max(P_b, 1)`` (the module
            docstring), or ``"valid"``, ``N = max(1, sum_b P_b)`` (Caffe's
            ``LossLayer::GetNormalizer`` in VALID mode, used by the RefineDet
            configs).
        class_weights: optional ``C`` factors, one per foreground class in
            ``class_target`` order (1..C), on the positive anchors' weights.

    Returns:
        Scalar float32 loss.
    """
    check_options(apply_to=apply_to, class_weights=class_weights)
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}."
        )
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    class_target = ops.cast(y_true[..., 4], "int32")
    matched = ops.cast(y_true[..., 5], "int32")
    positive = class_target > 0
    candidates = ops.logical_not(positive)
    if negative_mask is not None:
        candidates = ops.logical_and(candidates, negative_mask)
    positive_f = ops.cast(positive, "float32")
    num_pos = ops.sum(positive_f, axis=1)  # (B,)

    if weighting == "uniform":
        weights = positive_f  # (B, A); MultiBox needs no counts
    else:
        weights = ops.stop_gradient(
            positive_anchor_weights(matched, positive, alpha, beta, weighting)
        )

    if class_weights is not None:
        num_classes = y_pred.shape[-1] - 5
        if len(class_weights) != num_classes:
            raise ValueError(
                f"class_weights has {len(class_weights)} values for {num_classes} classes: "
                f"{list(class_weights)}."
            )
        # Index 0 (background) is never positive; its factor is irrelevant.
        factors = ops.convert_to_tensor([1.0, *class_weights], "float32")
        weights = weights * ops.take(factors, class_target)

    logits = y_pred[..., 4:]
    log_probs = ops.log_softmax(logits, axis=-1)
    cross_entropy = -ops.take_along_axis(
        log_probs, ops.expand_dims(class_target, -1), axis=-1
    )[..., 0]  # (B, A)

    # Hard negative mining: the top-k of the candidates' cross-entropy per image.
    # Non-candidates get -1 so they sort below every candidate (CE >= 0), and the
    # sum of the top-k values does not depend on how ties are broken.
    num_anchors = ops.shape(cross_entropy)[1]
    num_neg = ops.minimum(
        neg_pos_ratio * num_pos, ops.sum(ops.cast(candidates, "float32"), axis=1)
    )
    negative_ce = ops.where(candidates, cross_entropy, -1.0)
    top_negative_ce, _ = ops.top_k(negative_ce, k=num_anchors, sorted=True)
    rank = ops.cast(ops.arange(num_anchors), "float32")
    keep = ops.expand_dims(rank, 0) < ops.expand_dims(num_neg, 1)
    negative_loss = ops.sum(ops.where(keep, top_negative_ce, 0.0))
    positive_loss = ops.sum(weights * cross_entropy)

    box_loss = ops.sum(_smooth_l1(y_pred[..., :4] - y_true[..., :4]), axis=-1)
    box_weights = weights if apply_to == "both" else positive_f
    localization_loss = ops.sum(box_weights * box_loss)

    if normalization == "per_image":
        normalizer = _global_sum(ops.sum(ops.maximum(num_pos, 1.0)))
    else:
        normalizer = ops.maximum(_global_sum(ops.sum(num_pos)), 1.0)
    normalizer = ops.stop_gradient(normalizer)
    return (positive_loss + negative_loss + localization_loss) / normalizer


class DetectionLoss(keras.losses.Loss):
    """Base of the library's Keras losses (`ScaleBalancedLoss`, `MultiBoxLoss`,
    `keras_scb.refinedet_loss.RefineDetLoss`).

    It holds what they all have, hard negative mining's ``neg_pos_ratio`` and the
    optional ``class_weights``, checks them with `check_options` and puts them in
    the config; a subclass checks, stores and adds to `get_config` only its own
    options, and defines ``call``.

    Args:
        neg_pos_ratio: negatives kept per positive in hard negative mining.
        class_weights: optional factor per foreground class on the positives'
            weights (`multibox_loss`); None: all 1.
        name, **kwargs: as ``keras.losses.Loss``.
    """

    def __init__(
        self,
        neg_pos_ratio: int = 3,
        class_weights: Sequence[float] | None = None,
        name: str | None = None,
        **kwargs,
    ):
        check_options(neg_pos_ratio=neg_pos_ratio, class_weights=class_weights)
        super().__init__(name=name, **kwargs)
        self.neg_pos_ratio = neg_pos_ratio
        self.class_weights = None if class_weights is None else tuple(map(float, class_weights))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "neg_pos_ratio": self.neg_pos_ratio,
            "class_weights": self.class_weights,
        }


@keras.saving.register_keras_serializable(package="keras_scb")
class ScaleBalancedLoss(DetectionLoss):
    """Keras loss for SSD-family detectors with scale-balanced object weights.

    ``loss(y_true (B, A, 6), y_pred (B, A, 4 + C + 1))`` returns a scalar; see
    `multibox_loss` for the tensors and the module docstring for the semantics.

    Args:
        alpha, beta: SCB constants (paper: 1 and 3).
        neg_pos_ratio: negatives kept per positive in hard negative mining.
        apply_to: ``"classification"`` (authors' code, default) or ``"both"``
            (the paper's Eq. 2: localisation weighted too).
        weighting: one of `WEIGHTINGS`.
        class_weights: optional factor per foreground class (`DetectionLoss`).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 3.0,
        neg_pos_ratio: int = 3,
        apply_to: str = "classification",
        weighting: str = "scb",
        class_weights: Sequence[float] | None = None,
        name: str = "scale_balanced_loss",
        **kwargs,
    ):
        check_options((weighting,), apply_to)
        super().__init__(neg_pos_ratio, class_weights, name=name, **kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.apply_to = apply_to
        self.weighting = weighting

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return multibox_loss(
            y_true,
            y_pred,
            weighting=self.weighting,
            alpha=self.alpha,
            beta=self.beta,
            neg_pos_ratio=self.neg_pos_ratio,
            apply_to=self.apply_to,
            class_weights=self.class_weights,
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "apply_to": self.apply_to,
            "weighting": self.weighting,
        }


@keras.saving.register_keras_serializable(package="keras_scb")
class MultiBoxLoss(DetectionLoss):
    """The plain SSD multibox loss (Liu et al. 2016): every object weighs 1.

    ``loss(y_true (B, A, 6), y_pred (B, A, 4 + C + 1))`` returns a scalar; see
    `multibox_loss`.

    Args:
        neg_pos_ratio: negatives kept per positive in hard negative mining.
        class_weights: optional factor per foreground class (`DetectionLoss`).
    """

    weighting = "uniform"

    def __init__(
        self,
        neg_pos_ratio: int = 3,
        class_weights: Sequence[float] | None = None,
        name: str = "multibox_loss",
        **kwargs,
    ):
        super().__init__(neg_pos_ratio, class_weights, name=name, **kwargs)

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return multibox_loss(
            y_true,
            y_pred,
            weighting=self.weighting,
            neg_pos_ratio=self.neg_pos_ratio,
            class_weights=self.class_weights,
        )

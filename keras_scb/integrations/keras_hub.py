"""keras-hub's RetinaNet trained with scale-balanced object weights (SCB).

`ScaleBalancedRetinaNet` is a ``keras_hub.models.RetinaNetObjectDetector`` whose
classification loss (keras-hub's default binary focal loss, unchanged) is
weighted per anchor by `keras_scb.anchor_weights.anchor_sample_weights`, from
the assignment of the model's own ``RetinaNetLabelEncoder``: a positive anchor
of box ``i`` weighs ``W_i`` (``"scb"``: ``beta * (ln M_i + alpha) / M_i``, ``M_i``
counted per image over box ``i``'s positive anchors), a negative 1, an ignored
anchor (IoU between keras-hub's 0.4 and 0.5) 0. Everything else is keras-hub's:
the box loss (Huber, positives only), the normaliser (the batch's unweighted
number of positive anchors), the decoding in ``predict``, ``get_config``, export.
With ``weighting="uniform"`` the loss is keras-hub's exactly.

keras-hub's matcher has no forced match: a box whose best anchor has IoU < 0.5
gets no positive anchor, so no classification loss as an object (258 of the 3,943
BCCD training boxes, 6.5 %, on its default anchors at 256 x 256:
``benchmarks/retinanet_experiment.py --match_counts``). ``force_best_anchor=True`` adds the SSD matcher's forced
match (`keras_scb.matching.forced_best_anchor`): every box also takes its best
anchor as a positive, with that box's class and box target, so that SCB can weight
every box. It changes the training targets, so it is a recipe change of its own
(the experiment's control arm, `benchmarks/retinanet_experiment.py`).

Boxes follow keras-hub's conventions (``bounding_box_format``, ``"yxyx"`` pixels
by default; ``y = {"boxes": (B, G, 4), "labels": (B, G)}``, padding rows -1).
Needs keras-hub (the optional extra ``keras-hub``, pinned in constraints.txt).
"""

from typing import Any

import keras
import keras_hub
from keras import ops

# Not in keras-hub's public API (0.29.1, pinned); the model's `label_encoder` is one.
from keras_hub.src.models.retinanet.retinanet_label_encoder import RetinaNetLabelEncoder

from keras_scb.anchor_weights import WEIGHTINGS, Tensor, anchor_sample_weights
from keras_scb.matching import forced_best_anchor


@keras.saving.register_keras_serializable(package="keras_scb")
class ForcedMatchBoxMatcher(keras_hub.layers.BoxMatcher):
    """keras-hub's ``BoxMatcher`` plus the SSD authors' forced best-anchor match.

    After keras-hub's thresholds, each real box (a column whose best IoU is > 0;
    keras-hub's padding boxes, all -1, overlap nothing) claims its best anchor as a
    positive (``match_values[-1]``), a later box overwriting an earlier one
    (`keras_scb.matching.forced_best_anchor`). keras-hub's own
    ``force_match_for_each_col`` differs: an earlier box wins, and its padding
    column claims anchor 0.

    Takes ``(B, A, G)`` IoU, anchors by boxes, as keras-hub's label encoder passes
    it; returns ``(matched_columns, matched_values)``, both ``(B, A)`` int32.
    """

    def call(self, similarity_matrix: Tensor) -> tuple[Tensor, Tensor]:
        if len(similarity_matrix.shape) != 3:
            raise ValueError(
                "ForcedMatchBoxMatcher takes a batched (B, A, G) IoU matrix; got shape "
                f"{tuple(similarity_matrix.shape)}."
            )
        matched_columns, matched_values = super().call(similarity_matrix)
        overlaps = ops.transpose(similarity_matrix, (0, 2, 1))  # (B, G, A)
        # One column of zeros (no box) keeps G >= 1 for an image batch without boxes.
        overlaps = ops.pad(overlaps, ((0, 0), (0, 1), (0, 0)))
        valid = ops.max(overlaps, axis=2) > 0.0
        forced = forced_best_anchor(overlaps, valid, ops)
        matched_columns = ops.where(forced >= 0, forced, matched_columns)
        matched_values = ops.where(
            forced >= 0, ops.cast(self.match_values[-1], "int32"), matched_values
        )
        return ops.cast(matched_columns, "int32"), ops.cast(matched_values, "int32")


@keras.saving.register_keras_serializable(package="keras_scb")
class ForcedMatchLabelEncoder(RetinaNetLabelEncoder):
    """keras-hub's ``RetinaNetLabelEncoder`` (same arguments, same targets) with a
    `ForcedMatchBoxMatcher`: every box has at least one positive anchor."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        matcher = self.box_matcher
        self.box_matcher = ForcedMatchBoxMatcher(
            thresholds=[self.negative_threshold, self.positive_threshold],
            match_values=list(matcher.match_values),
            force_match_for_each_col=matcher.force_match_for_each_col,
        )


def forced_match_encoder(encoder: RetinaNetLabelEncoder) -> ForcedMatchLabelEncoder:
    """``encoder``'s settings (and its anchor generator) with the forced match."""
    return ForcedMatchLabelEncoder(
        anchor_generator=encoder.anchor_generator,
        bounding_box_format=encoder.bounding_box_format,
        encoding_format=encoder.encoding_format,
        positive_threshold=encoder.positive_threshold,
        negative_threshold=encoder.negative_threshold,
        box_variance=encoder.box_variance,
        background_class=encoder.background_class,
        ignore_class=encoder.ignore_class,
        box_matcher_match_values=list(encoder.box_matcher.match_values),
        box_matcher_force_match_for_each_col=encoder.box_matcher.force_match_for_each_col,
    )


def label_encoder_assignment(label_encoder, images: Tensor, gt_boxes: Tensor) -> Tensor:
    """The box index per anchor that ``label_encoder`` (a ``RetinaNetLabelEncoder``)
    assigns: its anchors, IoU and ``box_matcher``, exactly as its ``_encode_sample``
    computes them (keras-hub returns only the encoded targets).

    Args:
        images: ``(B, H, W, C)``.
        gt_boxes: ``(B, G, 4)`` in ``label_encoder.bounding_box_format``.

    Returns:
        ``(B, A)`` int32 box index per anchor (meaningful where the encoder's class
        target is a positive one, i.e. ``> -1``).
    """
    height, width, channels = ops.shape(images)[1:]
    anchors = label_encoder.anchor_generator(images)
    anchors = ops.concatenate(list(anchors.values()), axis=0)
    anchors = keras.utils.bounding_boxes.convert_format(
        anchors,
        source=label_encoder.anchor_generator.bounding_box_format,
        target=label_encoder.bounding_box_format,
        height=height,
        width=width,
    )
    iou = keras.utils.bounding_boxes.compute_iou(
        anchors,
        gt_boxes,
        bounding_box_format=label_encoder.bounding_box_format,
        image_shape=(height, width, channels),
    )
    matched, _ = label_encoder.box_matcher(iou)
    return matched


@keras.saving.register_keras_serializable(package="keras_scb")
class ScaleBalancedRetinaNet(keras_hub.models.RetinaNetObjectDetector):
    """``RetinaNetObjectDetector`` with SCB-weighted classification (module docstring).

    Args:
        backbone, num_classes: as ``RetinaNetObjectDetector``.
        alpha, beta: SCB constants (paper: 1 and 3).
        weighting: one of `keras_scb.anchor_weights.WEIGHTINGS`; ``"uniform"`` is
            keras-hub's loss.
        force_best_anchor: train with the forced best-anchor match: the model's
            label encoder becomes a `ForcedMatchLabelEncoder` with its settings.
        **kwargs: ``RetinaNetObjectDetector``'s other arguments
            (``bounding_box_format``, ``anchor_generator``, ``label_encoder``,
            ``pre_logits_num_conv_layers``, ...).
    """

    def __init__(
        self,
        backbone: keras.Model,
        num_classes: int,
        alpha: float = 1.0,
        beta: float = 3.0,
        weighting: str = "scb",
        force_best_anchor: bool = False,
        **kwargs,
    ):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Unknown weighting {weighting!r}; expected one of {WEIGHTINGS}.")
        super().__init__(backbone, num_classes, **kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.weighting = weighting
        self.force_best_anchor = bool(force_best_anchor)
        if self.force_best_anchor and not isinstance(self.label_encoder, ForcedMatchLabelEncoder):
            # A .keras file restores the ForcedMatchLabelEncoder of the config.
            self.label_encoder = forced_match_encoder(self.label_encoder)

    def compute_loss(self, x, y, y_pred, sample_weight, **kwargs):
        """keras-hub's ``RetinaNetObjectDetector.compute_loss`` with the anchors'
        SCB weights multiplied into the classification sample weights."""
        _, height, width, _ = ops.shape(x)
        encoder = self.label_encoder
        y = keras.utils.bounding_boxes.convert_format(
            y,
            source=self.bounding_box_format,
            target=encoder.bounding_box_format,
            height=height,
            width=width,
        )
        boxes, labels = encoder(images=x, gt_boxes=y["boxes"], gt_classes=y["labels"])
        matched = label_encoder_assignment(encoder, x, y["boxes"])
        positive = ops.greater(labels, -1.0)
        ignore = ops.equal(labels, encoder.ignore_class)
        cls_weights = anchor_sample_weights(
            matched, positive, ignore, self.alpha, self.beta, self.weighting
        )
        positive_f = ops.cast(positive, "float32")
        # keras-hub's normaliser, the unweighted positive count; weights 0 without any.
        normalizer = ops.sum(positive_f)
        has_positives = normalizer > 0
        normalizer = ops.where(has_positives, normalizer, 1.0)
        sample_weight = {
            "bbox_regression": ops.where(has_positives, positive_f / normalizer, 0.0),
            "cls_logits": ops.where(has_positives, cls_weights / normalizer, 0.0),
        }
        y_true = {
            "bbox_regression": boxes,
            "cls_logits": ops.one_hot(ops.cast(labels, "int32"), self.num_classes, dtype="float32"),
        }
        # Past RetinaNetObjectDetector's own compute_loss, to keras's.
        return super(keras_hub.models.RetinaNetObjectDetector, self).compute_loss(
            x=x, y=y_true, y_pred=y_pred, sample_weight=sample_weight, **kwargs
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "weighting": self.weighting,
            "force_best_anchor": self.force_best_anchor,
        }

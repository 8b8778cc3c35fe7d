"""What a detector's output holds per anchor: the two layouts and their training targets.

- ``"ssd"``: ``(B, A, 4 + C + 1)`` offsets ``[dcx, dcy, dw, dh]`` then ``C + 1``
  logits, background first. Trained on ``"ssd"`` targets (the anchors' encoded
  matches, `keras_scb.matching.encode_targets`, ``(B, A, 6)``).
- ``"refinedet"``: ``(B, A, 4 + 2 + 4 + C + 1)``: the ARM's offsets and
  (background, object) logits, then an SSD-layout ODM output to decode against
  the ARM-refined anchors. Trained on ``"gt"`` targets (the padded ground truth
  ``(B, G, 5)``: the loss matches the refined anchors itself).

A detector states its layout (`keras_scb.models.Detector.output_layout`); nothing
guesses it from a name or an output width. ``keras.ops`` or `tf_ops` code, as
`keras_scb.box_coding`: the RefineDet loss (any backend) and post-processing (TF)
share it.
"""

from typing import Any, Optional, Sequence, Tuple

from keras_scb.box_coding import VARIANCES, refine_anchors

SSD = "ssd"
REFINEDET = "refinedet"
LAYOUTS = (SSD, REFINEDET)
# The targets (`keras_scb.data.pipeline` ``targets=``) each layout trains on.
TARGETS = {SSD: "ssd", REFINEDET: "gt"}

ARM_DEPTH = 6  # 4 offsets + (background, object) logits
# ARM background probability above which an anchor is dropped (RefineDet's Caffe code).
NEGATIVE_FILTER_THRESHOLD = 0.99


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"output_layout must be one of {LAYOUTS}; got {layout!r}.")
    return layout


def split_refinedet_outputs(raw: Any) -> Tuple[Any, Any]:
    """``(B, A, 10 + C + 1)`` -> ``(arm (B, A, 6), odm (B, A, 4 + C + 1))``."""
    return raw[..., :ARM_DEPTH], raw[..., ARM_DEPTH:]


def arm_background_probability(arm: Any, ops: Optional[Any] = None) -> Any:
    """``(B, A, 6)`` ARM output -> ``(B, A)`` float32 softmax probability of background."""
    if ops is None:
        import keras

        ops = keras.ops
    return ops.softmax(ops.cast(arm[..., 4:], "float32"), axis=-1)[..., 0]


def refinedet_to_ssd_outputs(
    raw: Any,
    anchors: Any,
    variances: Sequence[float] = VARIANCES,
    negative_filter_threshold: float = NEGATIVE_FILTER_THRESHOLD,
    ops: Optional[Any] = None,
) -> Tuple[Any, Any]:
    """RefineDet output -> per-image anchors and SSD-layout ODM predictions.

    Anchors filtered out by the ARM (background probability above the
    threshold) get foreground logits of -1e9, so after the softmax their
    foreground scores are 0, as the authors' detection output zeroes them.

    Args:
        raw: ``(B, A, 10 + C + 1)`` model output.
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.
        ops: ``keras.ops`` (default) or `keras_scb.box_coding.tf_ops()`.

    Returns:
        ``(refined_anchors (B, A, 4) [cx, cy, w, h], odm (B, A, 4 + C + 1))``:
        decode ``odm`` against ``refined_anchors`` as an SSD output.
    """
    if ops is None:
        import keras

        ops = keras.ops
    arm, odm = split_refinedet_outputs(ops.cast(raw, "float32"))
    refined = refine_anchors(arm[..., :4], anchors, variances, ops)
    filtered = arm_background_probability(arm, ops) > negative_filter_threshold
    foreground = ops.where(ops.expand_dims(filtered, -1), -1e9, odm[..., 5:])
    return refined, ops.concatenate([odm[..., :5], foreground], axis=-1)

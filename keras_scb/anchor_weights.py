"""Per-anchor object weights from an anchor-to-box assignment: the one SCB core.

Any anchor-based detector assigns each anchor of an image to at most one
ground-truth box. Given that assignment, ``matched`` ``(B, A)`` int (the box
index of each anchor, ignored where not positive) and ``positive`` ``(B, A)``
bool, `positive_anchor_weights` gives every positive anchor the weight of its
box, a function of ``M_i``, the number of positive anchors of box ``i`` in its
image (the paper's Table 1 forms, `WEIGHTINGS`; SCB is
``W_i = beta * (ln(M_i) + alpha) / M_i``). Nothing here knows the anchors, their
number, the network or the classification loss: SSD's softmax cross-entropy
(`keras_scb.losses`, `keras_scb.refinedet_loss`) and keras-hub RetinaNet's
binary focal loss (`keras_scb.integrations.keras_hub`) multiply these weights
into their per-anchor classification losses. `anchor_sample_weights` is the
form a loss that takes per-anchor sample weights needs: ``W_i`` on positives,
1 on negatives, 0 on ignored anchors.

Normalisers, the choice a user makes around these weights:

* The weights themselves are not normalised (``"scb"``, as the authors' code):
  the positives' total classification weight becomes
  ``beta * sum_i (ln M_i + alpha)`` instead of the number of positive anchors
  ``P`` (a mean weight per positive anchor of 1.88 on BCCD's SSD anchors). The
  loss keeps dividing by the *unweighted* count of positives (SSD's
  ``N = sum_b max(P_b, 1)``, keras-hub RetinaNet's ``sum_b P_b``), so SCB also
  moves weight from the negatives to the positives.
* ``"scb_mean_normalised"`` rescales each image's weights to mean 1 over its
  positive anchors (`mean_normalise_per_image`): the positives keep their
  unweighted total ``P``, only its split between boxes changes. It is the control
  that separates the two effects of ``"scb"``.
* Dividing the loss by the *weighted* positive total instead would be the batch
  analogue of ``"scb_mean_normalised"``; no loss of the library does it.

Written with ``keras.ops`` (any backend; numpy in, backend tensor out); in
TensorFlow graphs not compiled by XLA a sparse path over the P positive anchors
(`_positive_counts`) replaces the dense segment sum, with the same values.
"""

from typing import Any

from keras import ops

from keras_scb import keras_compat

# A tensor of the Keras backend, or an array ``keras.ops`` converts (numpy).
Tensor = Any

WEIGHTINGS = (
    "uniform",
    "inverse_log",
    "inverse_sqrt",
    "inverse",
    "scb",
    "uniform_beta",
    "scb_mean_normalised",
)


def scale_balanced_weights(
    num_matches: Tensor,
    alpha: float = 1.0,
    beta: float = 3.0,
    weighting: str = "scb",
) -> Tensor:
    """Per-object weights from matched-anchor counts (the paper's Table 1 forms).

    Args:
        num_matches: float tensor of any shape, ``M >= 1`` (values below 1 are
            treated as 1; they only occur on background anchors).
        weighting: one of `WEIGHTINGS`: ``"uniform"`` 1, ``"inverse_log"``
            ``1 / (ln M + 1)``, ``"inverse_sqrt"`` ``1 / sqrt(M)``, ``"inverse"``
            ``1 / M``, ``"scb"`` ``beta * (ln M + alpha) / M``, ``"uniform_beta"``
            ``beta`` (the control "every positive up", no scale balance).
            ``"scb_mean_normalised"`` is not a function of ``M`` alone: this
            returns its unnormalised ``"scb"`` weights, and
            `mean_normalise_per_image` rescales them.

    Returns:
        Weights, same shape as ``num_matches``.
    """
    m = ops.maximum(ops.cast(num_matches, "float32"), 1.0)
    if weighting == "uniform":
        return ops.ones_like(m)
    if weighting == "inverse_log":
        return 1.0 / (ops.log(m) + 1.0)
    if weighting == "inverse_sqrt":
        return 1.0 / ops.sqrt(m)
    if weighting == "inverse":
        return 1.0 / m
    if weighting in ("scb", "scb_mean_normalised"):
        return beta * (ops.log(m) + alpha) / m
    if weighting == "uniform_beta":
        return beta * ops.ones_like(m)
    raise ValueError(f"Unknown weighting {weighting!r}; expected one of {WEIGHTINGS}.")


def mean_normalise_per_image(weights: Tensor, positive: Tensor) -> Tensor:
    """Rescales each image's weights so that their mean over its positive anchors is 1.

    This is ``"scb_mean_normalised"``, the control that separates SCB's two effects:
    with ``"scb"`` the positives of an image carry a total classification weight
    ``beta * sum_i (ln M_i + alpha)`` instead of MultiBox's ``P`` (its number of
    positive anchors), so SCB both re-balances objects and changes how much the
    positives weigh against the ``3 P`` hard negatives. Normalising the mean over
    the positive *anchors* (not over the objects) keeps the total at ``P``, exactly
    MultiBox's, so only the split of that total between objects changes (object
    ``i`` gets the share ``(ln M_i + alpha) / sum_j (ln M_j + alpha)``). A mean of
    1 over the image's objects would instead make the total depend on the mix of
    object sizes (two objects with ``M = 1`` and ``100``: 12.5 instead of
    ``P = 101``), mixing the two effects again.

    Args:
        weights: ``(B, A)`` float32 per-anchor weights (those of anchors that
            are not positive are ignored).
        positive: ``(B, A)`` bool.

    Returns:
        ``(B, A)`` float32; an image without positives keeps all-zero weights.
    """
    positive_f = ops.cast(positive, "float32")
    weights = weights * positive_f
    num_pos = ops.sum(positive_f, axis=1, keepdims=True)
    total = ops.sum(weights, axis=1, keepdims=True)
    # An image without positives has total 0 and weights 0: any finite scale works.
    scale = num_pos / ops.where(total > 0.0, total, 1.0)
    return weights * scale


def match_count_per_anchor(matched: Tensor, positive: Tensor) -> Tensor:
    """Per anchor, ``M_i`` of the box it is assigned to, counted per image.

    The per-box view of the same count (over a dataset, for statistics) is
    `keras_scb.match_stats.match_counts_per_box`. In TensorFlow graphs not
    compiled by XLA it is counted over the positive anchors only
    (`_positive_counts`), elsewhere by a segment sum over every anchor.

    Args:
        matched: ``(B, A)`` int32 box index per anchor (ignored where not positive).
        positive: ``(B, A)`` bool.

    Returns:
        ``(B, A)`` float32: for a positive anchor, the number of positive anchors
        of its image assigned to the same box; 0 elsewhere.
    """
    if keras_compat.tensorflow_graph_without_xla():
        import tensorflow as tf

        index, counts = _positive_counts(matched, positive)
        return tf.scatter_nd(index, counts, tf.shape(matched, out_type=tf.int64))
    batch, num_anchors = ops.shape(matched)[0], ops.shape(matched)[1]
    image = ops.expand_dims(ops.arange(batch, dtype="int32"), 1)
    # One segment per (image, box); box indices are < A, so b * A + i is unique.
    segment = ops.where(positive, image * num_anchors + matched, 0)
    segment = ops.reshape(segment, (-1,))
    ones = ops.reshape(ops.cast(positive, "float32"), (-1,))
    counts = ops.segment_sum(ones, segment, num_segments=batch * num_anchors)
    per_anchor = ops.reshape(ops.take(counts, segment), (batch, num_anchors))
    return ops.where(positive, per_anchor, 0.0)


def positive_anchor_weights(
    matched: Tensor,
    positive: Tensor,
    alpha: float = 1.0,
    beta: float = 3.0,
    weighting: str = "scb",
) -> Tensor:
    """Per anchor, the weight ``W_i`` of the box it is assigned to (0 elsewhere).

    ``scale_balanced_weights(match_count_per_anchor(matched, positive)) * positive``
    (``"scb_mean_normalised"`` then rescaled by `mean_normalise_per_image`). In
    TensorFlow graphs not compiled by XLA the weights are computed for the P
    positive anchors only and scattered once, so SCB adds no elementwise pass
    over the B * A anchors to MultiBox's step (`benchmarks/loss_overhead.py`).

    Args:
        matched: ``(B, A)`` int32 box index per anchor (ignored where not positive).
        positive: ``(B, A)`` bool.
        alpha, beta, weighting: as `scale_balanced_weights`.

    Returns:
        ``(B, A)`` float32 weights, 0 on anchors that are not positive.
    """
    if keras_compat.tensorflow_graph_without_xla():
        import tensorflow as tf

        index, counts = _positive_counts(matched, positive)
        weights = scale_balanced_weights(counts, alpha, beta, weighting)
        weights = tf.scatter_nd(index, weights, tf.shape(matched, out_type=tf.int64))
    else:
        counts = match_count_per_anchor(matched, positive)
        weights = scale_balanced_weights(counts, alpha, beta, weighting)
        weights = weights * ops.cast(positive, "float32")
    if weighting == "scb_mean_normalised":
        weights = mean_normalise_per_image(weights, positive)
    return weights


def _positive_counts(matched: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """``M_i`` for the P positive anchors only, in TensorFlow.

    TensorFlow's CPU scatter and gather kernels cost about 10 ns per scalar
    element, so a dense segment sum and gather over all B * A anchors were most
    of SCB's time over MultiBox (``benchmarks/scb_count_cost.py``); P is a few
    hundred. Not under XLA: it pads the dynamic P to B * A and is slower there.

    Returns:
        ``index`` ``(P, 2)`` int64 ``[image, anchor]`` of the positive anchors and
        ``counts`` ``(P,)`` float32, the ``M_i`` of each one's box.
    """
    import tensorflow as tf

    matched = tf.convert_to_tensor(matched, tf.int32)
    index = tf.where(positive)
    num_anchors = tf.shape(matched, out_type=tf.int64)[1]
    box = index[:, 0] * num_anchors + tf.cast(tf.gather_nd(matched, index), tf.int64)
    # Renumber the boxes 0..K-1 so that the count needs K slots, not B * A.
    boxes, box = tf.unique(box, out_idx=tf.int32)
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(box, tf.float32), box, tf.size(boxes)
    )
    return index, tf.gather(counts, box)



def anchor_sample_weights(
    matched: Tensor,
    positive: Tensor,
    ignore: Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 3.0,
    weighting: str = "scb",
) -> Tensor:
    """Per-anchor sample weights for a loss summed over every anchor (focal loss).

    ``positive_anchor_weights`` on the positive anchors, 1 on the negatives and 0
    on the ``ignore`` anchors (those between the two IoU thresholds of RetinaNet's
    matcher); with ``weighting="uniform"`` this is the plain 0/1 mask of the
    anchors that count. The loss's normaliser is the caller's (module docstring).

    Args:
        matched: ``(B, A)`` int box index per anchor (ignored where not positive).
        positive: ``(B, A)`` bool.
        ignore: optional ``(B, A)`` bool, anchors that take no loss.
        alpha, beta, weighting: as `scale_balanced_weights`.

    Returns:
        ``(B, A)`` float32, no gradient.
    """
    weights = positive_anchor_weights(matched, positive, alpha, beta, weighting)
    weights = ops.where(positive, weights, 1.0)
    if ignore is not None:
        weights = ops.where(ignore, 0.0, weights)
    return ops.stop_gradient(weights)

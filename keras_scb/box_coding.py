"""SSD box coding: ground-truth corners <-> offsets against anchors.

One implementation for the whole library: the input pipeline encodes targets with
it (`keras_scb.matching`, in TensorFlow), the losses encode against RefineDet's
refined anchors with it (``keras.ops``, under any backend), and post-processing
decodes and refines with it (`keras_scb.postprocess`). Every function takes an
``ops`` namespace: ``keras.ops`` (the default) or `tf_ops()`, the same subset in
plain TensorFlow for ``tf.data`` and TF graphs whatever the Keras backend.

Box formats: anchors are relative ``[cx, cy, w, h]``; boxes are relative corners
``[xmin, ymin, xmax, ymax]``; offsets are ``[dcx, dcy, dw, dh]`` scaled by the
``variances`` ``(centre, size)``, as in the SSD authors' Caffe code.
"""

import functools
import types
from typing import Any, Optional, Sequence

VARIANCES = (0.1, 0.2)
# Bound on the decoded log size change when refining anchors, as torchvision's box
# decoding: a diverging ARM must not make refined anchors of infinite or zero
# size (NaN targets).
MAX_LOG_SCALE = 4.135166556742356  # log(1000 / 16)


@functools.lru_cache(maxsize=None)
def tf_ops() -> types.SimpleNamespace:
    """The subset of the ``keras.ops`` API that box coding and matching use, in plain TF.

    Imported lazily so that the ``keras.ops`` users (the losses under JAX) do
    not need TensorFlow.
    """
    import tensorflow as tf

    return types.SimpleNamespace(
        arange=tf.range,
        cast=tf.cast,
        clip=tf.clip_by_value,
        concatenate=lambda xs, axis: tf.concat(xs, axis=axis),
        convert_to_tensor=tf.convert_to_tensor,
        exp=tf.exp,
        expand_dims=tf.expand_dims,
        log=tf.math.log,
        max=lambda x, axis: tf.reduce_max(x, axis=axis),
        maximum=tf.maximum,
        min=lambda x, axis: tf.reduce_min(x, axis=axis),
        minimum=tf.minimum,
        one_hot=lambda x, n: tf.one_hot(x, n),
        shape=tf.shape,
        softmax=lambda x, axis: tf.nn.softmax(x, axis=axis),
        stack=lambda xs, axis: tf.stack(xs, axis=axis),
        take_along_axis=tf.experimental.numpy.take_along_axis,
        where=tf.where,
    )


def _ops(ops: Optional[Any]) -> Any:
    if ops is None:
        import keras

        return keras.ops
    return ops


def to_corners(boxes: Any, ops: Optional[Any] = None) -> Any:
    """``(..., 4)`` ``[cx, cy, w, h]`` -> ``(..., 4)`` ``[xmin, ymin, xmax, ymax]``."""
    ops = _ops(ops)
    centre, size = boxes[..., :2], boxes[..., 2:]
    return ops.concatenate([centre - size / 2.0, centre + size / 2.0], axis=-1)


def encode_offsets(
    boxes: Any, anchors: Any, variances: Sequence[float] = VARIANCES, ops: Optional[Any] = None
) -> Any:
    """Corners ``(..., A, 4)`` -> offsets ``(..., A, 4)`` against ``(A, 4)`` or
    ``(..., A, 4)`` ``[cx, cy, w, h]`` anchors (degenerate boxes get a tiny size)."""
    ops = _ops(ops)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0
    size = ops.maximum(boxes[..., 2:] - boxes[..., :2], 1e-8)
    d_centre = (centre - anchors[..., :2]) / (variances[0] * anchors[..., 2:])
    d_size = ops.log(size / anchors[..., 2:]) / variances[1]
    return ops.concatenate([d_centre, d_size], axis=-1)


def apply_offsets(
    offsets: Any,
    anchors: Any,
    variances: Sequence[float] = VARIANCES,
    ops: Optional[Any] = None,
    max_log_scale: Optional[float] = None,
) -> Any:
    """Moves anchors by offsets: the inverse of `encode_offsets`, in centre form.

    Args:
        offsets: ``(..., A, 4)`` ``[dcx, dcy, dw, dh]``.
        anchors: ``(A, 4)`` or broadcastable relative ``[cx, cy, w, h]``.
        max_log_scale: bound on ``|dw * variance|`` (None: unbounded).

    Returns:
        float32 ``(..., A, 4)`` relative ``[cx, cy, w, h]``.
    """
    ops = _ops(ops)
    offsets = ops.cast(offsets, "float32")
    anchors = ops.cast(ops.convert_to_tensor(anchors), "float32")
    centre = anchors[..., :2] + offsets[..., :2] * variances[0] * anchors[..., 2:]
    log_scale = offsets[..., 2:] * variances[1]
    if max_log_scale is not None:
        log_scale = ops.clip(log_scale, -max_log_scale, max_log_scale)
    return ops.concatenate([centre, anchors[..., 2:] * ops.exp(log_scale)], axis=-1)


def decode_offsets(
    offsets: Any, anchors: Any, variances: Sequence[float] = VARIANCES, ops: Optional[Any] = None
) -> Any:
    """Offsets ``(..., A, 4)`` -> float32 relative corners ``(..., A, 4)``
    ``[xmin, ymin, xmax, ymax]`` (unclipped)."""
    return to_corners(apply_offsets(offsets, anchors, variances, ops), ops)


def refine_anchors(
    arm_offsets: Any,
    anchors: Any,
    variances: Sequence[float] = VARIANCES,
    ops: Optional[Any] = None,
) -> Any:
    """RefineDet's ARM step: anchors ``(A, 4)`` moved by ``(B, A, 4)`` offsets.

    Returns:
        float32 ``(B, A, 4)`` refined anchors ``[cx, cy, w, h]``; the size change
        is bounded by `MAX_LOG_SCALE`.
    """
    return apply_offsets(arm_offsets, anchors, variances, ops, MAX_LOG_SCALE)

"""Anchor matching and target encoding inside the loss, on the accelerator.

By default the SSD-family losses take targets encoded per image on the CPU by the
input pipeline (`keras_scb.data.pipeline`, ``targets="ssd"``): ``(B, A, 6)``
``[dcx, dcy, dw, dh, class_target, matched_gt]``. Matching is a large share of
that pipeline's CPU time per image (``benchmarks/input_pipeline.py --threads 1``
measures each stage), so a fast accelerator needs that many more CPU cores.
`MatchOnDevice` moves it into the compiled train step: the pipeline gives the
padded ground truth (``targets="gt"``) and the wrapper matches and encodes it
with ``keras.ops`` (`keras_scb.matching.match_and_encode`, the code the pipeline
runs in TensorFlow) before calling the wrapped loss, as the RefineDet loss
already does. The targets, and so the loss, are the same either way.
"""

from typing import Any, Callable, Sequence

import keras
from keras import ops

from keras_scb.anchors import (
    AnchorSpec,
    anchor_spec_from_config,
    anchor_spec_to_config,
    get_anchors,
)
from keras_scb.matching import MATCH_IOU, VARIANCES, match_and_encode

Tensor = Any


def encode_ground_truth(
    y_true: Tensor,
    anchors: Tensor,
    iou_threshold: float = MATCH_IOU,
    variances: Sequence[float] = VARIANCES,
) -> Tensor:
    """Padded ground truth -> SSD targets, with ``keras.ops`` (any backend, jittable).

    Args:
        y_true: ``(B, G, 5)`` ``[xmin, ymin, xmax, ymax, class]``: relative corners,
            class ``0..C-1`` or ``-1`` on padding rows (the ``targets="gt"``
            pipeline output).
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.
        iou_threshold, variances: as `keras_scb.matching.encode_targets`.

    Returns:
        ``(B, A, 6)`` float32 ``[dcx, dcy, dw, dh, class_target, matched_gt]``,
        equal to `keras_scb.matching.encode_targets` of the same boxes.
    """
    y_true = ops.cast(y_true, "float32")
    boxes = y_true[..., :4]
    classes = ops.cast(y_true[..., 4], "int32")
    anchors = ops.convert_to_tensor(anchors, "float32")
    return match_and_encode(boxes, classes, anchors, iou_threshold, variances, ops)


@keras.saving.register_keras_serializable(package="keras_scb")
class MatchOnDevice(keras.losses.Loss):
    """Wraps an SSD loss so that it takes padded ground truth and matches itself.

    ``MatchOnDevice(ScaleBalancedLoss(), model.anchor_spec)(y_true, y_pred)``
    equals ``ScaleBalancedLoss()(encode_targets(boxes, classes, anchors), y_pred)``.
    Feed it the ``targets="gt"`` pipeline (train CLI: ``--match_on=device``).

    Args:
        loss: a loss taking ``(B, A, 6)`` targets (`ScaleBalancedLoss`,
            `MultiBoxLoss`), or its serialised config.
        anchor_spec: preset name, `keras_scb.anchors.AnchorSpec` or its config
            dict (the model's ``anchor_spec``).
        iou_threshold, variances: as `keras_scb.matching.encode_targets`.

    Call: ``y_true`` ``(B, G, 5)`` as `encode_ground_truth`; ``y_pred``
    ``(B, A, 4 + C + 1)``.
    """

    # What it takes (`keras_scb.data.pipeline` ``targets``): padded ground truth;
    # a `Detector` fit on box dicts gives it that.
    targets = "gt"

    def __init__(
        self,
        loss: Callable | dict,
        anchor_spec: str | AnchorSpec | dict,
        iou_threshold: float = MATCH_IOU,
        variances: Sequence[float] = VARIANCES,
        name: str | None = None,
        **kwargs,
    ):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not callable(loss):
            raise TypeError(f"MatchOnDevice needs a loss object; got {loss!r}.")
        super().__init__(name=name or f"{getattr(loss, 'name', 'loss')}_on_device", **kwargs)
        self.loss = loss
        self.anchor_spec = anchor_spec_from_config(anchor_spec)
        self.anchors = get_anchors(self.anchor_spec)
        self.iou_threshold = float(iou_threshold)
        self.variances = tuple(float(v) for v in variances)

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        targets = encode_ground_truth(y_true, self.anchors, self.iou_threshold, self.variances)
        return self.loss(targets, y_pred)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "loss": keras.saving.serialize_keras_object(self.loss),
            "anchor_spec": anchor_spec_to_config(self.anchor_spec),
            "iou_threshold": self.iou_threshold,
            "variances": self.variances,
        }

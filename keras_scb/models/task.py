"""`DetectionTask`: what makes a `Detector` a keras-hub style detection task.

keras-hub's ``ObjectDetector`` contract, on top of the library's own:

- ``fit(images, {"boxes": (B, G, 4), "labels": (B, G)})``: boxes in the
  detector's ``bounding_box_format`` (`keras_scb.box_formats`), labels
  ``0..C-1`` and ``-1`` on padding rows. The train step converts them to the
  library's relative corners and, for a loss on encoded anchors
  (`ScaleBalancedLoss`, `MultiBoxLoss`), matches and encodes them on the device
  (`keras_scb.on_device.encode_ground_truth`, the code the input pipeline runs),
  so the loss and its gradients are those of the encoded-targets path. A loss
  that matches itself (`RefineDetLoss`, `MatchOnDevice`: ``targets = "gt"``)
  gets the padded ground truth ``(B, G, 5)``. The library's own targets
  (``fit(images, (B, A, 6))``, the ``(B, G, 5)`` ground truth) pass unchanged,
  and so does the `keras_scb.data.pipeline.validation_pipeline` ``info`` dict
  (relative corners, ``classes``, ``difficult`` boxes left out as in training):
  ``fit(..., validation_data=validation_pipeline(...))`` reports ``val_loss``.
- ``predict(images)``: the detections ``{"boxes" (B, K, 4) in the detector's
  format, "confidence" (B, K), "labels" (B, K) int32 0..C-1, "num_detections"
  (B,)}``, rows past ``num_detections`` ``-1`` (keras-hub's padding), decoded
  inside the predict step by `keras_scb.decoding.DetectionDecoder` (``keras.ops``:
  TF and JAX). The network's raw output ``(B, A, D)`` is `predict_raw` /
  `predict_raw_on_batch`.

Bad input is refused with a one-line ValueError naming the argument: box dicts
of the wrong shape, non-finite boxes or labels out of range (checked on arrays
before training; box shapes also when a dataset is traced, and a ``tf.data``
dataset's values batch by batch, `checked_dataset`), and images of
another size than the detector's square input (refused, not resized: resize
them, or use `keras_scb.postprocess.build_inference_model`, which does).
"""

import contextlib
from typing import Any, Optional

import numpy as np
from keras import ops

from keras_scb.box_formats import from_relative_corners, to_relative_corners
from keras_scb.decoding import DECODER_DEFAULTS, DetectionDecoder
from keras_scb.on_device import encode_ground_truth

Tensor = Any
PREDICTION_KEYS = ("boxes", "confidence", "labels", "num_detections")


def _check_box_shapes(boxes_shape, labels_shape, argument: str) -> None:
    if len(boxes_shape) != 3 or boxes_shape[-1] != 4:
        raise ValueError(
            f"{argument}['boxes'] must be (batch, boxes, 4); got shape {tuple(boxes_shape)}."
        )
    if len(labels_shape) != 2 or tuple(labels_shape) != tuple(boxes_shape[:2]):
        raise ValueError(
            f"{argument}['labels'] must be (batch, boxes) = {tuple(boxes_shape[:2])}; "
            f"got shape {tuple(labels_shape)}."
        )


def padded_ground_truth(
    y: dict, bounding_box_format: str, image_size: int
) -> Tensor:
    """A box dict -> the library's padded ground truth, with ``keras.ops``.

    Args:
        y: ``{"boxes": (B, G, 4) in bounding_box_format, "labels": (B, G)}``
            (keras-hub's), or the ``info`` dict of `validation_pipeline`
            (``boxes`` relative corners, ``classes``, optional ``difficult``).
        bounding_box_format: the format of ``y["boxes"]`` in a keras-hub dict.
        image_size: side ``S`` of the detector input (pixel formats).

    Returns:
        float32 ``(B, G, 5)`` ``[xmin, ymin, xmax, ymax, class]`` relative corners,
        class ``-1`` (and zero box) on padding rows.
    """
    if "labels" in y:
        labels = y["labels"]
        _check_box_shapes(y["boxes"].shape, labels.shape, "y")
        boxes = to_relative_corners(y["boxes"], bounding_box_format, image_size)
    elif "classes" in y:  # validation_pipeline's info: already relative corners
        labels = y["classes"]
        _check_box_shapes(y["boxes"].shape, labels.shape, "y")
        boxes = ops.cast(y["boxes"], "float32")
        if "difficult" in y:
            labels = ops.where(y["difficult"], -1, labels)
    else:
        raise ValueError(
            f"y must be a dict with 'boxes' and 'labels'; got keys {sorted(y)}."
        )
    labels = ops.cast(labels, "int32")
    real = ops.expand_dims(labels >= 0, -1)
    boxes = ops.where(real, boxes, 0.0)
    return ops.concatenate(
        [boxes, ops.expand_dims(ops.cast(labels, "float32"), -1)], axis=-1
    )


def check_box_dict(y: Any, num_classes: int, argument: str = "y") -> None:
    """Refuses a box dict of numpy-convertible arrays that would train silently
    wrong: wrong shapes, NaN / inf boxes, labels outside ``-1..C-1``. Anything
    else (a dataset, the library's encoded targets) passes."""
    if not isinstance(y, dict) or "labels" not in y or "boxes" not in y:
        return
    boxes, labels = np.asarray(y["boxes"]), np.asarray(y["labels"])
    _check_box_shapes(boxes.shape, labels.shape, argument)
    if not np.isfinite(boxes).all():
        image = int(np.argwhere(~np.isfinite(boxes))[0][0])
        raise ValueError(
            f"{argument}['boxes'] holds NaN or inf (image {image} of the batch); "
            "nothing was trained."
        )
    bad = (labels != np.round(labels)) | (labels < -1) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"{argument}['labels'] must be -1 (padding) or 0..{num_classes - 1}; "
            f"got {sorted(set(np.asarray(labels)[bad].tolist()))[:5]}."
        )


def checked_dataset(dataset: Any, num_classes: int) -> Any:
    """A ``tf.data`` dataset of ``(images, box dict)`` whose batches are checked
    as `check_box_dict` checks arrays: a batch with NaN / inf boxes or labels
    outside ``-1..C-1`` stops ``fit`` (``InvalidArgumentError`` naming the
    field) before any step trains on it. Other datasets come back unchanged."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) >= 2 and isinstance(spec[1], dict)
            and "labels" in spec[1] and "boxes" in spec[1]):
        return dataset
    import tensorflow as tf  # a tf.data dataset: TensorFlow is there

    def check(images, y, *rest):
        labels = tf.cast(y["labels"], tf.float32)
        checks = [
            tf.debugging.assert_all_finite(
                tf.cast(y["boxes"], tf.float32), "y['boxes'] holds NaN or inf; not trained on"
            ),
            tf.debugging.assert_equal(
                tf.reduce_all((labels >= -1) & (labels < num_classes)), True,
                message=f"y['labels'] must be -1 (padding) or 0..{num_classes - 1}",
            ),
        ]
        with tf.control_dependencies(checks):
            y = {key: tf.identity(value) for key, value in y.items()}
        return (images, y, *rest)

    return dataset.map(check)


def _image_shape(x: Any) -> Optional[tuple]:
    """The ``(H, W)`` of an image batch or of a dataset's images, if known."""
    spec = getattr(x, "element_spec", None)
    if spec is not None:
        x = spec[0] if isinstance(spec, tuple) else spec
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        return None
    return tuple(shape[1:3])


class DetectionTask:
    """Mixin of `keras_scb.models.Detector` (module docstring).

    Needs from the model: ``anchors``, ``anchor_spec``, ``image_size``,
    ``num_classes``, ``output_layout``, ``targets`` and ``bounding_box_format``.
    """

    _raw_predictions = False
    _raw_predict_function = None
    _decoder_options: dict = DECODER_DEFAULTS

    # ------------------------------------------------------------------ training

    def loss_targets(self, y: Any) -> Any:
        """What the compiled loss takes, from ``y``: a box dict is converted
        (module docstring); the library's own targets pass unchanged."""
        if not isinstance(y, dict):
            return y
        ground_truth = padded_ground_truth(y, self.bounding_box_format, self.image_size)
        if getattr(self.loss, "targets", self.targets) == "gt":
            return ground_truth
        return encode_ground_truth(ground_truth, self.anchors)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return super().compute_loss(
            x, self.loss_targets(y), y_pred, sample_weight, training=training
        )

    def check_images(self, x: Any, argument: str = "x") -> None:
        """Refuses images (array or dataset) of another size than ``S x S``."""
        shape = _image_shape(x)
        size = self.image_size
        if shape is not None and None not in shape and tuple(shape) != (size, size):
            raise ValueError(
                f"{argument}: images are {shape[0]}x{shape[1]} pixels but this detector "
                f"takes {size}x{size}; resize them (keras.layers.Resizing), or predict "
                "with keras_scb.postprocess.build_inference_model, which resizes."
            )

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        self.check_images(x)
        check_box_dict(y, self.num_classes)
        if hasattr(x, "element_spec"):
            x = checked_dataset(x, self.num_classes)
        if isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
            self.check_images(validation_data[0], "validation_data")
            check_box_dict(validation_data[1], self.num_classes, "validation_data")
        elif validation_data is not None:
            self.check_images(validation_data, "validation_data")
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    # ---------------------------------------------------------------- prediction

    def set_prediction_options(self, **options: Any) -> None:
        """Decoder options of `predict` (thresholds, ``max_detections``,
        ``pre_nms_top_k``; default `keras_scb.decoding.DECODER_DEFAULTS`)."""
        self._decoder_options = {**DECODER_DEFAULTS, **options}
        self.predict_function = None  # traced with the old options

    def decode_predictions(self, raw: Tensor) -> dict:
        """Raw output ``(B, A, D)`` -> the `predict` dict (module docstring)."""
        detections = DetectionDecoder(
            self.anchor_spec, output_layout=self.output_layout, **self._decoder_options
        )(raw)
        count = detections["num_detections"]
        valid = ops.arange(detections["scores"].shape[1])[None] < count[:, None]
        boxes = from_relative_corners(
            detections["boxes"], self.bounding_box_format, self.image_size
        )
        return {
            "boxes": ops.where(valid[..., None], boxes, -1.0),
            "confidence": ops.where(valid, detections["scores"], -1.0),
            "labels": ops.where(valid, detections["classes"], -1),
            "num_detections": count,
        }

    def predict_step(self, *args):
        # TF: predict_step(data) -> outputs; JAX: predict_step(state, data) ->
        # (outputs, non-trainable variables).
        outputs = super().predict_step(*args)
        if self._raw_predictions:
            return outputs
        if isinstance(outputs, tuple):
            return self.decode_predictions(outputs[0]), outputs[1]
        return self.decode_predictions(outputs)

    def predict(self, x, *args, **kwargs):
        self.check_images(x)
        return super().predict(x, *args, **kwargs)

    @contextlib.contextmanager
    def _raw_mode(self):
        """Inside, the predict functions return the raw output; each mode keeps
        its own traced function."""
        detections = self.predict_function
        self.predict_function, self._raw_predictions = self._raw_predict_function, True
        try:
            yield
        finally:
            self._raw_predict_function = self.predict_function
            self.predict_function, self._raw_predictions = detections, False

    def predict_raw(self, x, *args, **kwargs) -> np.ndarray:
        """The network's output ``(B, A, D)`` (`keras_scb.output_layout`), with
        ``keras.Model.predict``'s arguments."""
        with self._raw_mode():
            return self.predict(x, *args, **kwargs)

    def predict_raw_on_batch(self, x) -> np.ndarray:
        """`predict_raw` of one batch (``keras.Model.predict_on_batch``)."""
        self.check_images(x)
        with self._raw_mode():
            return self.predict_on_batch(x)

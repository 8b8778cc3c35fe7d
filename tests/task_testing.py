"""Toy detectors and batches for the detection-task tests (`tests/test_detection_task.py`).

Imported by those tests in process (TensorFlow) and by their JAX subprocesses
(``sys.path`` gets ``tests/``), so it imports neither TensorFlow nor pytest.
"""

import keras
import numpy as np

from keras_scb.anchors import AnchorSpec
from keras_scb.box_formats import from_relative_corners
from keras_scb.models import Detector
from keras_scb.models.heads import check_feature_maps, multibox_head

SPEC = AnchorSpec(
    image_size=64, feature_map_sizes=(8, 4), min_sizes=(12, 28), max_sizes=(28, 56),
    aspect_ratios=((2,), (2,)),
)
NUM_CLASSES = 3


def toy_detector(layout="ssd", bounding_box_format="xyxy", seed=0):
    """A 20 k-parameter ``(B, 64, 64, 3)`` detector of either output layout
    (RefineDet: an ARM head of one class next to the SSD head)."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((SPEC.image_size, SPEC.image_size, 3), name="images")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(images)
    x = keras.layers.Conv2D(16, 3, strides=4, padding="same", activation="relu")(x)
    fine = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(x)
    coarse = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(fine)
    check_feature_maps([fine, coarse], SPEC)
    per_location = SPEC.anchors_per_location()
    outputs = multibox_head([fine, coarse], per_location, NUM_CLASSES, name="odm")
    if layout == "refinedet":
        arm = multibox_head([fine, coarse], per_location, 1, name="arm")
        outputs = keras.layers.Concatenate(axis=-1)([arm, outputs])
    return Detector(
        images, outputs, anchor_spec=SPEC, num_classes=NUM_CLASSES, output_layout=layout,
        bounding_box_format=bounding_box_format, name=f"toy_{layout}",
    )


def batch(seed=0, images=4, max_boxes=5):
    """Images ``(B, 64, 64, 3)`` in ``[0, 255]``, relative corners ``(B, G, 4)``,
    labels ``(B, G)`` with -1 rows (padding boxes -1, as keras-hub pads); one
    image without boxes."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 255, (images, SPEC.image_size, SPEC.image_size, 3))
    lo = rng.uniform(0.0, 0.6, (images, max_boxes, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.08, 0.4, (images, max_boxes, 2))], -1)
    labels = rng.integers(0, NUM_CLASSES, (images, max_boxes))
    labels[:, 3:] = -1
    labels[-1] = -1
    boxes = np.where(labels[..., None] >= 0, np.clip(boxes, 0, 1), -1.0)
    return pixels.astype("float32"), boxes.astype("float32"), labels.astype("int32")


def box_dict(boxes, labels, bounding_box_format):
    """keras-hub's ``{"boxes", "labels"}`` from relative corners, padding rows kept -1."""
    converted = np.asarray(from_relative_corners(boxes, bounding_box_format, SPEC.image_size))
    return {"boxes": np.where(labels[..., None] >= 0, converted, -1.0).astype("float32"),
            "labels": labels}


def loss_for(name):
    from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
    from keras_scb.on_device import MatchOnDevice
    from keras_scb.refinedet_loss import RefineDetLoss

    return {
        "scb": lambda: ScaleBalancedLoss(),
        "multibox": lambda: MultiBoxLoss(),
        "scb_on_device": lambda: MatchOnDevice(ScaleBalancedLoss(), SPEC),
        "refinedet": lambda: RefineDetLoss(SPEC),
    }[name]()


def one_step(model, loss, x, y):
    """(loss, weight change) of one full-batch SGD step at learning rate 1, that
    is ``-gradient``."""
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    change = [np.array(w) - b for w, b in zip(model.trainable_weights, before)]
    return history.history["loss"][0], change


def box_dict_and_encoded_steps(loss_name, layout, bounding_box_format="xywh"):
    """The same SGD step fit on box dicts and on the library's targets:
    ``(dict loss, targets loss, max |gradient difference|, max |gradient|)``."""
    from keras_scb.matching import encode_targets

    x, boxes, labels = batch()
    if layout == "refinedet" or loss_name == "scb_on_device":  # padded ground truth
        targets = np.concatenate([np.where(labels[..., None] >= 0, boxes, 0.0),
                                  labels[..., None].astype("float32")], -1)
    else:  # what the pipeline's targets="ssd" feeds
        targets = np.asarray(encode_targets(boxes, labels, toy_detector(layout).anchors))
    dict_loss, dict_change = one_step(
        toy_detector(layout, bounding_box_format), loss_for(loss_name), x,
        box_dict(boxes, labels, bounding_box_format),
    )
    target_loss, target_change = one_step(
        toy_detector(layout), loss_for(loss_name), x, targets
    )
    difference = max(np.abs(a - b).max() for a, b in zip(dict_change, target_change))
    scale = max(np.abs(b).max() for b in target_change)
    return float(dict_loss), float(target_loss), float(difference), float(scale)

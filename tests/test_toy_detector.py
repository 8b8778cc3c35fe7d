"""A new detector is one builder plus one registry line (docs/architecture.md).

The toy detector below stands for a new architecture's module; the test takes it
through the library's whole path: the training pipeline and ``fit``, a ``.keras``
round trip, the library evaluation, and the TFLite export run by the LiteRT
interpreter, which must give the Keras inference model's detections.

Budget: ~25 s on 2 cores (a 20 k-parameter net at 64 px, one TFLite conversion).
"""

import keras
import numpy as np
import pytest

from keras_scb.anchors import AnchorSpec
from keras_scb.models import Detector, build_detector, detector_entry, register_detector
from keras_scb.models.heads import check_feature_maps, multibox_head

# ---------------------------------------------------------------- the new detector's file

TOY_ANCHORS = AnchorSpec(
    image_size=64,
    feature_map_sizes=(8, 4),
    min_sizes=(12, 28),
    max_sizes=(28, 56),
    aspect_ratios=((2,), (2,)),
)


@register_detector("toy-detector")  # the one registry line
def toy_detector(num_classes: int, anchors: AnchorSpec = TOY_ANCHORS, **unused) -> Detector:
    """``(B, 64, 64, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``."""
    images = keras.Input((anchors.image_size, anchors.image_size, 3), name="images")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(images)
    x = keras.layers.Conv2D(16, 3, strides=4, padding="same", activation="relu")(x)
    fine = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(x)
    coarse = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(fine)
    check_feature_maps([fine, coarse], anchors)
    outputs = multibox_head([fine, coarse], anchors.anchors_per_location(), num_classes)
    return Detector(
        images, outputs, anchor_spec=anchors, num_classes=num_classes, name="toy"
    )


# ---------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def data():
    from keras_scb.data.synthetic import make_synthetic

    settings = dict(image_size=(64, 64), size_range=(10, 40), objects_per_image=(1, 3))
    return make_synthetic(16, seed=0, **settings), make_synthetic(8, seed=1, **settings)


def test_toy_detector_trains_evaluates_and_exports(data, tmp_path):
    from exporters import accuracy, common, runtime, tflite
    from keras_scb.data import pipeline
    from keras_scb.losses import ScaleBalancedLoss
    from keras_scb.validation import evaluate_detector

    train, val = data
    assert detector_entry("toy-detector").targets == "ssd"
    keras.utils.set_random_seed(0)
    detector = build_detector("toy-detector", 3, class_names=train.class_names)
    detector.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
                     loss=ScaleBalancedLoss(), jit_compile=False)
    batches = pipeline.training_pipeline(
        train, detector.anchors, batch_size=4, image_size=detector.image_size,
        targets=detector.targets, augment=None, repeat=True, seed=0,
    )
    before = [np.array(w) for w in detector.trainable_weights]
    history = detector.fit(batches, epochs=1, steps_per_epoch=3, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, np.array(b))
               for a, b in zip(before, detector.trainable_weights))

    path = str(tmp_path / "toy.keras")
    detector.save(path)
    loaded = common.load_detector(path)
    assert isinstance(loaded, Detector) and loaded.name == "toy"
    assert loaded.registry_name == "toy-detector"
    assert (loaded.output_layout, loaded.targets) == ("ssd", "ssd")
    assert loaded.class_names == tuple(train.class_names)
    assert common.export_metadata(loaded, None, {})["model"] == "toy-detector"

    results = evaluate_detector(loaded, val, batch_size=4)
    assert 0.0 <= results["voc07"]["mAP"] <= 1.0
    assert set(results["recall_by_scale_at_input"]) == set(results["recall_by_scale"])

    model = tflite.export_tflite(loaded, tmp_path / "toy.tflite", score_threshold=0.05)
    assert (tmp_path / "labels.txt").read_text().split() == list(train.class_names)
    runner = runtime.load_runner(model)
    assert isinstance(runner, runtime.TFLiteDetector)
    images = np.random.default_rng(3).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    keras_out = runtime.load_runner(path, score_threshold=0.05)(images)
    lite_out = accuracy.run_batched(runner, images, batch_size=1)
    assert keras_out["num_detections"].min() > 0
    agreement = accuracy.detection_agreement(keras_out, lite_out, top_k=20, iou_threshold=0.99)
    assert agreement["matched"] == 1.0 and agreement["max_score_diff"] < 1e-3

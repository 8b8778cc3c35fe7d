"""keras_scb.integrations.keras_hub on keras-hub's RetinaNetObjectDetector
(`make test-keras-hub`, the optional extra): the weights in the loss against the
loop reference from the same assignment, weighting "uniform" = keras-hub's loss
exactly, the forced match, a .keras round trip, fit, predict and export."""

import os

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402
from keras import ops  # noqa: E402

import reference  # noqa: E402
from keras_scb.integrations.keras_hub import (  # noqa: E402
    ForcedMatchLabelEncoder,
    ScaleBalancedRetinaNet,
    label_encoder_assignment,
)

pytestmark = pytest.mark.keras_hub

SIZE = 64


def tiny_backbone():
    """A from-scratch ResNet (keras-hub's, basic blocks) under keras-hub's FPN P3-P7."""
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16, 16, 16], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(SIZE, SIZE, 3))
    return keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=False,
        image_shape=(SIZE, SIZE, 3))


def detector(cls=ScaleBalancedRetinaNet, **options):
    keras.utils.set_random_seed(0)
    model = cls(tiny_backbone(), num_classes=3, pre_logits_num_conv_layers=1, **options)
    model.compile()
    return model


def batch():
    """Two images, yxyx pixels: a large box, a mid one, a 6 px one that no anchor
    reaches IoU 0.5 with, and a padding row; the second image has one box."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    boxes = np.array([[[4, 4, 60, 52], [30, 8, 54, 30], [10, 40, 16, 46], [-1, -1, -1, -1]],
                      [[8, 8, 40, 40], [-1, -1, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, -1]]],
                     "float32")
    labels = np.array([[0, 2, 1, -1], [1, -1, -1, -1]], "float32")
    return images, {"boxes": boxes, "labels": labels}


def assignment(model, images, y):
    encoder = model.label_encoder
    _, labels = encoder(images=images, gt_boxes=y["boxes"], gt_classes=y["labels"])
    labels = ops.convert_to_numpy(labels)
    matched = ops.convert_to_numpy(label_encoder_assignment(encoder, images, y["boxes"]))
    return matched, labels > -1, labels == -2


def loss(model, images, y):
    y_pred = model(images)
    return float(ops.convert_to_numpy(model.compute_loss(images, y, y_pred, None)))


@pytest.mark.parametrize("weighting", ["scb", "inverse", "scb_mean_normalised"])
def test_loss_weights_equal_the_loop_reference(weighting):
    model = detector(weighting=weighting, force_best_anchor=True)
    images, y = batch()
    matched, positive, ignore = assignment(model, images, y)
    want = reference.anchor_sample_weights(matched, positive, ignore, weighting)
    # keras-hub's loss with the reference's weights in its classification term.
    outputs = model(images)
    boxes, labels = model.label_encoder(images=images, gt_boxes=y["boxes"], gt_classes=y["labels"])
    cls_true = ops.one_hot(ops.cast(labels, "int32"), 3)
    focal = keras.losses.BinaryFocalCrossentropy(from_logits=True, reduction=None)
    per_anchor = ops.convert_to_numpy(focal(cls_true, outputs["cls_logits"]))
    huber = keras.losses.Huber(reduction=None)
    box = ops.convert_to_numpy(huber(boxes, outputs["bbox_regression"]))
    count = positive.sum()
    expected = (want * per_anchor).sum() / count + (positive * box).sum() / count
    assert loss(model, images, y) == pytest.approx(expected, rel=1e-5)
    assert not np.allclose(want[positive], 1.0)  # the weighting did something


def test_uniform_weighting_is_keras_hubs_loss_exactly():
    images, y = batch()
    theirs = detector(keras_hub.models.RetinaNetObjectDetector)
    ours = detector(weighting="uniform")
    ours.set_weights(theirs.get_weights())
    assert loss(ours, images, y) == loss(theirs, images, y)
    scb = detector(weighting="scb")
    scb.set_weights(theirs.get_weights())
    assert loss(scb, images, y) != loss(theirs, images, y)


def test_forced_match_gives_every_box_a_positive_anchor():
    images, y = batch()
    real = y["labels"] >= 0
    counts = {}
    for force in (False, True):
        matched, positive, _ = assignment(detector(force_best_anchor=force), images, y)
        counts[force] = np.array([[np.sum(positive[b] & (matched[b] == g)) for g in range(4)]
                                  for b in range(2)])
    assert np.any(counts[False][real] == 0)  # keras-hub leaves the 6 px box out
    assert np.all(counts[True][real] >= 1)
    assert np.all(counts[True][~real] == 0)  # padding rows claim nothing
    # The forced match only adds positives (no box here shares its best anchor).
    assert np.all(counts[True] >= counts[False])


def test_keras_round_trip_keeps_options_matcher_and_outputs(tmp_path):
    model = detector(alpha=0.5, beta=2.0, weighting="inverse_log", force_best_anchor=True)
    images, y = batch()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is ScaleBalancedRetinaNet
    assert (loaded.alpha, loaded.beta, loaded.weighting, loaded.force_best_anchor) == (
        0.5, 2.0, "inverse_log", True)
    assert isinstance(loaded.label_encoder, ForcedMatchLabelEncoder)
    loaded.compile()
    assert loss(loaded, images, y) == pytest.approx(loss(model, images, y), rel=1e-6)
    np.testing.assert_allclose(loaded.predict(images, verbose=0)["boxes"],
                               model.predict(images, verbose=0)["boxes"], atol=1e-4)


def test_fit_predict_and_export(tmp_path):
    model = detector(force_best_anchor=True)
    images, y = batch()
    history = model.fit(images, y, batch_size=2, epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    predicted = model.predict(images, verbose=0)
    assert set(predicted) == {"boxes", "confidence", "labels", "num_detections"}
    assert predicted["boxes"].shape == (2, 100, 4)
    # The same step eagerly, against keras-hub's own decoding of the raw outputs.
    got = model.predict_step(images)
    want = keras_hub.models.RetinaNetObjectDetector.decode_predictions(
        model, model(images, training=False), images)
    for key in predicted:
        np.testing.assert_array_equal(ops.convert_to_numpy(got[key]), ops.convert_to_numpy(want[key]))
    model.export(os.path.join(tmp_path, "saved_model"), format="tf_saved_model", verbose=False)
    assert os.path.exists(os.path.join(tmp_path, "saved_model", "saved_model.pb"))

"""RefineDet: network shape, training, saving, and its loss against a numpy loop reference."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from keras_scb.anchors import AnchorSpec, get_anchor_spec, get_anchors
from keras_scb.losses import WEIGHTINGS, multibox_loss
from keras_scb.models import Detector, build_detector
from keras_scb.refinedet_loss import (
    RefineDetLoss,
    refine_anchors,
    refinedet_loss,
    refinedet_to_ssd_outputs,
)

NUM_CLASSES = 3
DEPTH = 4 + 2 + 4 + NUM_CLASSES + 1
VARIANCES = (0.1, 0.2)


# ---------------------------------------------------------------- reference


def refine(offsets, anchors):
    """SSD box decoding into [cx, cy, w, h], per anchor."""
    out = np.zeros((len(anchors), 4))
    for a, (d, anchor) in enumerate(zip(np.asarray(offsets, np.float64), anchors)):
        out[a, :2] = anchor[:2] + d[:2] * VARIANCES[0] * anchor[2:]
        out[a, 2:] = anchor[2:] * np.exp(d[2:] * VARIANCES[1])
    return out


def ssd_targets(boxes, classes, anchors):
    """(A, 6) [offsets, class_target, matched] by the authors' loop."""
    matched, _ = reference.match(boxes, classes, anchors)
    targets = np.zeros((len(anchors), 6))
    targets[:, 5] = matched
    for a, g in enumerate(matched):
        if g >= 0:
            targets[a, :4] = reference.encode(boxes[g], anchors[a], VARIANCES)
            targets[a, 4] = classes[g] + 1
    return targets


def background_probability(logits):
    logits = np.asarray(logits, np.float64)
    return 1.0 / (1.0 + math.exp(logits[1] - logits[0]))


def reference_loss(y_true, y_pred, anchors, arm_weighting="scb", odm_weighting="uniform",
                   apply_to="classification", threshold=0.99):
    """Returns (loss, number of ODM positives removed by negative anchor filtering)."""
    anchors = np.asarray(anchors, np.float64)
    arm_true, odm_true, keep = [], [], []
    for b in range(len(y_true)):
        boxes, classes = y_true[b, :, :4], y_true[b, :, 4].astype(int)
        objects = np.where(classes >= 0, 0, -1)
        arm_true.append(ssd_targets(boxes, objects, anchors))
        refined = refine(y_pred[b, :, :4], anchors)
        odm_true.append(ssd_targets(boxes, classes, refined))
        keep.append([background_probability(y_pred[b, a, 4:6]) <= threshold
                     for a in range(len(anchors))])
    arm_true, odm_true, keep = map(np.array, (arm_true, odm_true, keep))
    arm = reference.multibox_loss(arm_true, y_pred[..., :6], arm_weighting, apply_to=apply_to)
    odm = reference.multibox_loss(odm_true, y_pred[..., 6:], odm_weighting, apply_to=apply_to,
                                  anchor_mask=keep)
    filtered_positives = int(np.sum((odm_true[..., 4] > 0) & ~keep))
    return arm + odm, filtered_positives


def tiny_problem(seed=0, num_anchors=40):
    """Two images, random anchors, 3 and 2 boxes (+ padding); a third of the
    anchors (and the best anchor of each box) confidently background in the ARM."""
    rng = np.random.default_rng(seed)
    anchors = np.concatenate(
        [rng.uniform(0.15, 0.85, (num_anchors, 2)), rng.uniform(0.05, 0.5, (num_anchors, 2))], 1
    ).astype(np.float32)
    y_true = np.full((2, 4, 5), 0.0, np.float32)
    y_true[..., 4] = -1
    for b, n in enumerate((3, 2)):
        for g in range(n):
            lo = rng.uniform(0.0, 0.6, 2)
            y_true[b, g, :4] = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, 2)])
            y_true[b, g, 4] = rng.integers(0, NUM_CLASSES)
    y_pred = rng.normal(size=(2, num_anchors, DEPTH)).astype(np.float32)
    y_pred[..., :4] *= 0.5  # refined anchors stay near the anchors
    filtered = rng.random((2, num_anchors)) < 1 / 3
    y_pred[..., 4] = np.where(filtered, 6.0, y_pred[..., 4])
    y_pred[..., 5] = np.where(filtered, -6.0, y_pred[..., 5])
    return y_true, y_pred, anchors


def loss_value(y_true, y_pred, anchors, **kwargs):
    return float(keras.ops.convert_to_numpy(refinedet_loss(y_true, y_pred, anchors, **kwargs)))


# ---------------------------------------------------------------- loss


@pytest.mark.parametrize(
    "arm_weighting, odm_weighting, apply_to",
    [("scb", "uniform", "classification"), ("uniform", "scb", "both"),
     ("inverse_sqrt", "inverse_log", "classification")],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_loop_reference(arm_weighting, odm_weighting, apply_to, seed):
    y_true, y_pred, anchors = tiny_problem(seed)
    want, filtered_positives = reference_loss(y_true, y_pred, anchors, arm_weighting,
                                              odm_weighting, apply_to)
    got = loss_value(y_true, y_pred, anchors, arm_weighting=arm_weighting,
                     odm_weighting=odm_weighting, apply_to=apply_to)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert filtered_positives > 0, "the problem must exercise the filtering of positives"


def test_negative_anchor_filtering_changes_the_loss_as_the_reference():
    y_true, y_pred, anchors = tiny_problem(2)
    filtered, _ = reference_loss(y_true, y_pred, anchors)
    unfiltered, _ = reference_loss(y_true, y_pred, anchors, threshold=1.0)
    assert abs(filtered - unfiltered) > 1e-3 * abs(unfiltered)
    np.testing.assert_allclose(loss_value(y_true, y_pred, anchors), filtered, rtol=1e-5)
    np.testing.assert_allclose(
        loss_value(y_true, y_pred, anchors, negative_filter_threshold=1.0), unfiltered, rtol=1e-5
    )


def test_arm_outputs_get_gradients_from_the_arm_loss_only():
    """Refined anchors and the filtering probability are constants for the ODM loss."""
    y_true, y_pred, anchors = tiny_problem(3)
    arm_true = np.stack([
        ssd_targets(y_true[b, :, :4], np.where(y_true[b, :, 4] >= 0, 0, -1), anchors)
        for b in range(len(y_true))
    ]).astype(np.float32)
    y_pred = tf.constant(y_pred)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(y_pred)
        total = refinedet_loss(y_true, y_pred, anchors)
        arm_only = multibox_loss(arm_true, y_pred[..., :6], weighting="scb")
    total_grad = tape.gradient(total, y_pred).numpy()
    arm_grad = tape.gradient(arm_only, y_pred).numpy()
    np.testing.assert_allclose(total_grad[..., :6], arm_grad[..., :6], rtol=1e-5, atol=1e-7)
    assert np.abs(total_grad[..., 6:]).max() > 0


def test_images_without_boxes_give_finite_loss():
    y_true, y_pred, anchors = tiny_problem(4)
    y_true[1, :, 4] = -1
    want, _ = reference_loss(y_true, y_pred, anchors)
    np.testing.assert_allclose(loss_value(y_true, y_pred, anchors), want, rtol=1e-5)


def test_loss_config_round_trip():
    spec = AnchorSpec(64, (2, 1), (16, 40), None, ((2,), (2,)))
    loss = RefineDetLoss(spec, arm_weighting="uniform", odm_weighting="scb", neg_pos_ratio=2)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, RefineDetLoss) and clone.get_config() == loss.get_config()
    assert clone.anchor_spec == spec
    y_true, y_pred, _ = tiny_problem(5, num_anchors=spec.num_anchors())
    np.testing.assert_allclose(
        float(clone(y_true, y_pred)),
        loss_value(y_true, y_pred, get_anchors(spec), arm_weighting="uniform",
                   odm_weighting="scb", neg_pos_ratio=2),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="weighting"):
        RefineDetLoss("refinedet320", odm_weighting="focal")


_JAX_SCRIPT = """
import json, numpy as np, keras
from keras_scb.refinedet_loss import refinedet_loss
assert keras.backend.backend() == "jax"
data = np.load({path!r})
values = {{w: float(refinedet_loss(data["y_true"], data["y_pred"], data["anchors"],
                                   arm_weighting=w, odm_weighting=w)) for w in {weightings!r}}}
print(json.dumps(values))
"""


def test_jax_backend_matches_tensorflow(tmp_path, python_subprocess):
    y_true, y_pred, anchors = tiny_problem(6)
    path = str(tmp_path / "problem.npz")
    np.savez(path, y_true=y_true, y_pred=y_pred, anchors=anchors)
    out = python_subprocess(_JAX_SCRIPT.format(path=path, weightings=WEIGHTINGS),
                            env={"KERAS_BACKEND": "jax"})
    jax_values = json.loads(out.strip().splitlines()[-1])
    assert sorted(jax_values) == sorted(WEIGHTINGS)
    for weighting, value in jax_values.items():
        tf_value = loss_value(y_true, y_pred, anchors, arm_weighting=weighting,
                              odm_weighting=weighting)
        np.testing.assert_allclose(value, tf_value, rtol=1e-5)


# ---------------------------------------------------------------- decoding helper


def test_refinedet_to_ssd_outputs():
    _, y_pred, anchors = tiny_problem(7)
    refined, odm = map(keras.ops.convert_to_numpy, refinedet_to_ssd_outputs(y_pred, anchors))
    assert refined.shape == (2, len(anchors), 4) and odm.shape == (2, len(anchors), 4 + NUM_CLASSES + 1)
    for b in range(2):
        np.testing.assert_allclose(refined[b], refine(y_pred[b, :, :4], anchors), rtol=1e-5)
        for a in range(len(anchors)):
            np.testing.assert_array_equal(odm[b, a, :5], y_pred[b, a, 6:11])
            if background_probability(y_pred[b, a, 4:6]) > 0.99:
                assert (odm[b, a, 5:] <= -1e8).all()
            else:
                np.testing.assert_array_equal(odm[b, a, 5:], y_pred[b, a, 11:])


# ---------------------------------------------------------------- network


def random_ground_truth(batch=1, seed=0):
    rng = np.random.default_rng(seed)
    y_true = np.zeros((batch, 3, 5), np.float32)
    y_true[..., 4] = -1
    lo = rng.uniform(0, 0.5, (batch, 2, 2))
    y_true[:, :2, :4] = np.concatenate([lo, lo + rng.uniform(0.05, 0.5, (batch, 2, 2))], -1)
    y_true[:, :2, 4] = rng.integers(0, NUM_CLASSES, (batch, 2))
    return y_true


def _check_network(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_detector(name, NUM_CLASSES)
    spec = get_anchor_spec(name)
    assert isinstance(model, Detector) and model.anchor_spec == spec
    assert model.output_shape == (None, spec.num_anchors(), DEPTH)
    assert model.get_layer("fc6").dilation_rate == (3, 3)
    assert model.get_layer("pool5").strides == (2, 2)

    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss=RefineDetLoss(spec),
                  jit_compile=False)
    size = model.image_size
    images = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    before = keras.ops.convert_to_numpy(model(images))
    history = model.fit(images, random_ground_truth(), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = keras.ops.convert_to_numpy(model(images))
    assert not np.allclose(before, after), "the train step changed nothing"

    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Detector) and loaded.anchor_spec == spec
    assert isinstance(loaded.loss, RefineDetLoss)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), after)


def test_refinedet320(tmp_path):
    _check_network("refinedet320", tmp_path)


@pytest.mark.slow
def test_refinedet512(tmp_path):
    _check_network("refinedet512", tmp_path)



def test_refined_anchor_sizes_are_bounded():
    """A diverging ARM gives finite, non-zero anchors (sizes x/÷ 1000/16 at most)."""
    anchors = np.array([[0.5, 0.5, 0.2, 0.1]], np.float32)
    offsets = np.array([[[0, 0, 1e4, -1e4]]], np.float32)
    refined = keras.ops.convert_to_numpy(refine_anchors(offsets, anchors))
    np.testing.assert_allclose(refined[0, 0, 2:], [0.2 * 1000 / 16, 0.1 * 16 / 1000], rtol=1e-5)

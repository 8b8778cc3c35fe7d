"""RefineDet: network shape, training, saving, and its loss against a loop
transcription of the authors' Caffe layer (tests/caffe_refinedet_reference.py)."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import caffe_refinedet_reference as caffe
from keras_scb.anchors import AnchorSpec, get_anchor_spec, get_anchors
from keras_scb.box_coding import refine_anchors, to_corners
from keras_scb.losses import WEIGHTINGS, multibox_loss
from keras_scb.matching import encode_matches
from keras_scb.models import Detector, build_detector
from keras_scb.output_layout import refinedet_to_ssd_outputs
from keras_scb.refinedet_loss import RefineDetLoss, caffe_match_anchors, refinedet_loss

NUM_CLASSES = 3
DEPTH = 4 + 2 + 4 + NUM_CLASSES + 1
VARIANCES = (0.1, 0.2)


def refine(offsets, anchors):
    """SSD box decoding into [cx, cy, w, h], per anchor."""
    out = np.zeros((len(anchors), 4))
    for a, (d, anchor) in enumerate(zip(np.asarray(offsets, np.float64), anchors)):
        out[a, :2] = anchor[:2] + d[:2] * VARIANCES[0] * anchor[2:]
        out[a, 2:] = anchor[2:] * np.exp(d[2:] * VARIANCES[1])
    return out


def background_probability(logits):
    logits = np.asarray(logits, np.float64)
    return 1.0 / (1.0 + math.exp(logits[1] - logits[0]))


def tiny_problem(seed=0, num_anchors=40):
    """Two images, random anchors, 3 and 2 boxes (+ padding); the second box of
    image 0 is a shifted copy of the first, so they often share a best anchor; a
    third of the anchors are confidently background in the ARM (P > 0.99)."""
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
    y_true[0, 1, :4] = y_true[0, 0, :4] + rng.uniform(-0.02, 0.02, 4)
    y_pred = rng.normal(size=(2, num_anchors, DEPTH)).astype(np.float32)
    y_pred[..., :4] *= 0.5  # refined anchors stay near the anchors
    filtered = rng.random((2, num_anchors)) < 1 / 3
    y_pred[..., 4] = np.where(filtered, 6.0, y_pred[..., 4])
    y_pred[..., 5] = np.where(filtered, -6.0, y_pred[..., 5])
    return y_true, y_pred, anchors


def loss_value(y_true, y_pred, anchors, **kwargs):
    return float(keras.ops.convert_to_numpy(refinedet_loss(y_true, y_pred, anchors, **kwargs)))


def odm_matches(y_true, y_pred, anchors, b):
    """The Caffe reference's ODM matching of image ``b``: (match_indices, priors)."""
    gt = caffe.get_ground_truth(y_true, 2)[b]
    anchors = np.asarray(anchors, np.float64)
    corners = np.concatenate([anchors[:, :2] - anchors[:, 2:] / 2,
                              anchors[:, :2] + anchors[:, 2:] / 2], axis=1)
    refined = [caffe.decode_bbox(p, l) for p, l in zip(corners, y_pred[b, :, :4])]
    return caffe.match_bbox([box for box, _ in gt], refined)[0]


# ---------------------------------------------------------------- loss


@pytest.mark.parametrize(
    "arm_weighting, odm_weighting, apply_to",
    [("uniform", "uniform", "classification"),  # plain RefineDet
     ("scb", "uniform", "classification"),  # SCB on the ARM (the paper's setting)
     ("scb", "scb", "classification"),  # SCB on both steps
     ("scb", "scb", "both"),
     ("inverse_sqrt", "inverse_log", "classification")],
)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_loss_matches_caffe_reference(arm_weighting, odm_weighting, apply_to, seed):
    y_true, y_pred, anchors = tiny_problem(seed)
    want = caffe.refinedet_loss(y_true, y_pred, anchors, arm_weighting, odm_weighting, apply_to)
    got = loss_value(y_true, y_pred, anchors, arm_weighting=arm_weighting,
                     odm_weighting=odm_weighting, apply_to=apply_to)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_problems_exercise_filtered_positives_and_shared_best_anchors():
    """The seeds above cover what the Caffe layer does differently from SSD."""
    filtered_positives = shared = 0
    for seed in range(4):
        y_true, y_pred, anchors = tiny_problem(seed)
        for b in range(2):
            matches = np.array(odm_matches(y_true, y_pred, anchors, b))
            filtered = np.array([background_probability(l) > 0.99 for l in y_pred[b, :, 4:6]])
            filtered_positives += int(np.sum((matches >= 0) & filtered))
        boxes = y_true[0, :2, :4]
        refined = refine(y_pred[0, :, :4], anchors)
        corners = np.concatenate([refined[:, :2] - refined[:, 2:] / 2,
                                  refined[:, :2] + refined[:, 2:] / 2], axis=1)
        best = [np.argmax([caffe.jaccard_overlap(c, box) for c in corners]) for box in boxes]
        shared += int(best[0] == best[1])
    assert filtered_positives > 0 and shared > 0


def test_filtered_positive_still_contributes_to_the_odm_loss():
    """Caffe's MineHardExamples filters candidate negatives only: a positive whose
    ARM background probability is above 0.99 keeps its ODM loss."""
    y_true, y_pred, anchors = tiny_problem(0)
    matches = np.array(odm_matches(y_true, y_pred, anchors, 0))
    anchor = int(np.flatnonzero(matches >= 0)[0])
    y_pred[0, anchor, 4:6] = [8.0, -8.0]  # background probability 1 - 1e-7
    changed = y_pred.copy()
    changed[0, anchor, 6:] += 1.5  # its ODM offsets and logits
    for pred in (y_pred, changed):
        np.testing.assert_allclose(loss_value(y_true, pred, anchors),
                                   caffe.refinedet_loss(y_true, pred, anchors), rtol=1e-5)
    assert abs(loss_value(y_true, changed, anchors) - loss_value(y_true, y_pred, anchors)) > 1e-3


def test_negative_anchor_filtering_threshold():
    y_true, y_pred, anchors = tiny_problem(2)
    filtered = caffe.refinedet_loss(y_true, y_pred, anchors)
    unfiltered = caffe.refinedet_loss(y_true, y_pred, anchors, objectness_score=0.0)
    assert abs(filtered - unfiltered) > 1e-3 * abs(unfiltered)
    np.testing.assert_allclose(loss_value(y_true, y_pred, anchors), filtered, rtol=1e-5)
    np.testing.assert_allclose(
        loss_value(y_true, y_pred, anchors, negative_filter_threshold=1.0), unfiltered, rtol=1e-5
    )


@pytest.mark.parametrize("seed", range(6))
def test_matching_is_caffes_greedy_bipartite_then_per_prediction(seed):
    """Crowded boxes (many share a best anchor) on a coarse anchor set."""
    rng = np.random.default_rng(seed)
    anchors = np.concatenate([rng.uniform(0.2, 0.8, (30, 2)), rng.uniform(0.1, 0.6, (30, 2))], 1)
    centre = rng.uniform(0.3, 0.7, 2)
    y_true = np.full((3, 8, 5), -1.0, np.float32)
    for b, n in enumerate((8, 5, 0)):
        for g in range(n):
            c = centre + rng.normal(0, 0.05, 2)
            size = rng.uniform(0.1, 0.4, 2)
            y_true[b, g] = [*(c - size / 2), *(c + size / 2), rng.integers(0, NUM_CLASSES)]
    y_true[0, 3, 4] = -1  # padding between real rows never matches
    got = keras.ops.convert_to_numpy(caffe_match_anchors(
        y_true[..., :4], y_true[..., 4].astype(np.int32), to_corners(anchors.astype(np.float32), np)
    ))
    corners = to_corners(anchors, np)
    for b in range(3):
        rows = [g for g in range(8) if y_true[b, g, 4] >= 0]
        want, _ = caffe.match_bbox([y_true[b, g, :4].astype(np.float64) for g in rows], corners)
        np.testing.assert_array_equal(got[b], [rows[m] if m >= 0 else -1 for m in want])
    assert len(set(got[0][got[0] >= 0])) == 7, "every box has an anchor"


def test_matching_ties_follow_caffes_scan_order():
    """Equal overlaps: Caffe's scan takes the lowest anchor, then the lowest box;
    a box whose best anchor is taken gets its next best (ssd.pytorch: none)."""
    anchors = np.array([[0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.32, 0.3, 0.2, 0.2],
                        [0.7, 0.7, 0.2, 0.2]], np.float32)
    box = [0.2, 0.2, 0.4, 0.4]
    y_true = np.array([[[*box, 0], [*box, 1], [*box, 2]]], np.float32)
    got = keras.ops.convert_to_numpy(caffe_match_anchors(
        y_true[..., :4], y_true[..., 4].astype(np.int32), to_corners(anchors, np)))
    want, _ = caffe.match_bbox([np.float64(box)] * 3, to_corners(np.float64(anchors), np))
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(want, [0, 1, 2, -1])


def test_normaliser_is_the_positives_of_the_batch():
    """Caffe's VALID normalisation: max(1, matches over the batch); an image
    without boxes adds nothing to it (nor negatives: its quota is 0)."""
    y_true, y_pred, anchors = tiny_problem(4)
    y_true[1, :, 4] = -1
    want = caffe.refinedet_loss(y_true, y_pred, anchors)
    np.testing.assert_allclose(loss_value(y_true, y_pred, anchors), want, rtol=1e-5)
    y_true[0, :, 4] = -1
    assert loss_value(y_true, y_pred, anchors) == 0.0


def test_arm_outputs_get_gradients_from_the_arm_loss_only():
    """Refined anchors and the filtering probability are constants for the ODM loss."""
    y_true, y_pred, anchors = tiny_problem(3)
    boxes, classes = y_true[..., :4], y_true[..., 4].astype(np.int32)
    objects = np.where(classes >= 0, 0, -1).astype(np.int32)
    matched = caffe_match_anchors(boxes, objects, to_corners(anchors, np))
    arm_true = encode_matches(boxes, objects, anchors, matched, VARIANCES, keras.ops)
    y_pred = tf.constant(y_pred)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(y_pred)
        total = refinedet_loss(y_true, y_pred, anchors)
        arm_only = multibox_loss(arm_true, y_pred[..., :6], weighting="scb",
                                 normalization="valid")
    total_grad = tape.gradient(total, y_pred).numpy()
    arm_grad = tape.gradient(arm_only, y_pred).numpy()
    np.testing.assert_allclose(total_grad[..., :6], arm_grad[..., :6], rtol=1e-5, atol=1e-7)
    assert np.abs(total_grad[..., 6:]).max() > 0


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
    with pytest.raises(ValueError, match="neg_pos_ratio must be >= 0"):
        RefineDetLoss("refinedet320", neg_pos_ratio=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_class_weights_weigh_the_odm_positives_only(seed):
    """All ones is the unweighted loss; other factors change the loss but not the
    gradient of the ARM outputs (the ARM's one class is never weighted)."""
    y_true, y_pred, anchors = tiny_problem(seed)
    plain = loss_value(y_true, y_pred, anchors)
    np.testing.assert_allclose(
        loss_value(y_true, y_pred, anchors, class_weights=[1.0] * NUM_CLASSES), plain, rtol=1e-6)
    weights = [0.5, 2.0, 4.0]
    assert abs(loss_value(y_true, y_pred, anchors, class_weights=weights) - plain) > 1e-3 * plain
    y_pred = tf.constant(y_pred)
    grads = []
    for class_weights in (None, weights):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = refinedet_loss(y_true, y_pred, anchors, class_weights=class_weights)
        grads.append(tape.gradient(value, y_pred).numpy())
    np.testing.assert_allclose(grads[1][..., :6], grads[0][..., :6], rtol=1e-6, atol=1e-8)
    assert np.abs(grads[1][..., 6:] - grads[0][..., 6:]).max() > 0
    clone = keras.losses.deserialize(keras.losses.serialize(
        RefineDetLoss(AnchorSpec(64, (2, 1), (16, 40), None, ((2,), (2,))), class_weights=weights)))
    assert clone.class_weights == tuple(weights)


_JAX_SCRIPT = """
import json, jax, numpy as np, keras
from keras_scb.refinedet_loss import refinedet_loss
assert keras.backend.backend() == "jax"
data = np.load({path!r})
values = {{w: float(refinedet_loss(data["y_true"], data["y_pred"], data["anchors"],
                                   arm_weighting=w, odm_weighting=w)) for w in {weightings!r}}}
# The matching's while loop must not block reverse-mode differentiation.
grad = jax.jit(jax.grad(lambda p: refinedet_loss(data["y_true"], p, data["anchors"])))(
    data["y_pred"])
values["grad"] = np.asarray(grad).ravel().tolist()
print(json.dumps(values))
"""


def test_jax_backend_matches_tensorflow(tmp_path, python_subprocess):
    y_true, y_pred, anchors = tiny_problem(6)
    path = str(tmp_path / "problem.npz")
    np.savez(path, y_true=y_true, y_pred=y_pred, anchors=anchors)
    out = python_subprocess(_JAX_SCRIPT.format(path=path, weightings=WEIGHTINGS),
                            env={"KERAS_BACKEND": "jax"})
    jax_values = json.loads(out.strip().splitlines()[-1])
    jax_grad = np.reshape(jax_values.pop("grad"), y_pred.shape)
    assert sorted(jax_values) == sorted(WEIGHTINGS)
    for weighting, value in jax_values.items():
        tf_value = loss_value(y_true, y_pred, anchors, arm_weighting=weighting,
                              odm_weighting=weighting)
        np.testing.assert_allclose(value, tf_value, rtol=1e-5)
    y_pred = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        total = refinedet_loss(y_true, y_pred, anchors)
    np.testing.assert_allclose(jax_grad, tape.gradient(total, y_pred).numpy(),
                               rtol=1e-4, atol=1e-7)


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
    assert (model.registry_name, model.output_layout, model.targets) == (name, "refinedet", "gt")
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
    assert (loaded.registry_name, loaded.output_layout) == (name, "refinedet")
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

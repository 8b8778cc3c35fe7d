"""Matching inside the loss (`keras_scb.on_device`) equals matching in the input pipeline."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from keras_scb.anchors import get_anchors
from keras_scb.data import pipeline
from keras_scb.data.synthetic import make_synthetic
from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
from keras_scb.matching import encode_targets
from keras_scb.on_device import MatchOnDevice, encode_ground_truth
from test_losses import assert_keras_file_keeps_loss
from test_matching import pad_batch

NUM_CLASSES = 20
SEEDS = (0, 1, 2, 3)


def ground_truth(seed, images=4):
    """``(B, G, 5)`` random boxes (2 px to whole image) with padding rows, some images empty."""
    rng = np.random.default_rng(seed)
    boxes, classes = pad_batch(
        [reference.random_boxes(rng, max_boxes=12, max_pad=4) for _ in range(images)]
    )
    return np.concatenate([boxes, classes[..., None].astype(np.float32)], -1)


def pipeline_targets(y_true, anchors):
    """What ``targets="ssd"`` feeds: each image encoded alone on its real boxes
    (plus one padding row, as the pipeline adds, so that no boxes is valid)."""
    rows = []
    for image in y_true:
        real = np.concatenate([image[image[:, 4] >= 0], [[0, 0, 0, 0, -1]]])
        rows.append(encode_targets(real[:, :4], real[:, 4].astype(np.int32), anchors).numpy())
    return np.stack(rows)


def predictions(seed, y_true_shape, num_anchors):
    rng = np.random.default_rng(100 + seed)
    return np.concatenate(
        [
            rng.normal(0, 1.5, (y_true_shape[0], num_anchors, 4)),
            rng.normal(0, 3.0, (y_true_shape[0], num_anchors, NUM_CLASSES + 1)),
        ],
        -1,
    ).astype(np.float32)


def assert_same_targets(got, want):
    # Same code on the same float32 inputs: the assignment (class, matched box)
    # must be exact; offsets may differ by an ulp where XLA fuses (log, division).
    np.testing.assert_array_equal(got[..., 4:], want[..., 4:])
    np.testing.assert_allclose(got[..., :4], want[..., :4], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", ["ssd300", "ssd512"])
def test_targets_equal_the_pipeline_encoding(preset):
    anchors = get_anchors(preset)
    jitted = tf.function(lambda y: encode_ground_truth(y, anchors), jit_compile=True)
    for seed in SEEDS if preset == "ssd300" else SEEDS[:2]:
        y_true = ground_truth(seed)
        assert (y_true[..., 4] < 0).any() and (y_true[..., 4] >= 0).any()
        want = pipeline_targets(y_true, anchors)
        assert (want[..., 4] > 0).sum() > 0
        assert_same_targets(np.asarray(encode_ground_truth(y_true, anchors)), want)
        assert_same_targets(jitted(y_true).numpy(), want)


def test_targets_equal_the_real_pipelines():
    """``targets="gt"`` + on-device encoding == ``targets="ssd"``, augmentation on."""
    data = make_synthetic(8, seed=3)
    common = dict(batch_size=4, seed=0, shuffle=False)
    ssd = list(pipeline.training_pipeline(data, "ssd300", targets="ssd", **common))
    gt = list(pipeline.training_pipeline(data, "ssd300", targets="gt", **common))
    anchors = get_anchors("ssd300")
    for (images_a, targets), (images_b, padded) in zip(ssd, gt):
        np.testing.assert_array_equal(images_a.numpy(), images_b.numpy())
        assert_same_targets(np.asarray(encode_ground_truth(padded, anchors)), targets.numpy())


def assert_same_gradients(got, want, name=""):
    # An ulp of a target offset moves the smooth-L1 gradient (pred - target) / N
    # by an ulp of the offset, not of the gradient: compare to the gradient's scale.
    got, want = np.asarray(got), np.asarray(want)
    assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want)), name


def _value_and_grad(loss, y_true, y_pred):
    y_pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = loss(y_true, y_pred)
    return float(value), tape.gradient(value, y_pred).numpy()


LOSSES = {
    "scb": ScaleBalancedLoss,
    "scb_both": lambda: ScaleBalancedLoss(apply_to="both"),
    "multibox": MultiBoxLoss,
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_and_gradients_equal_cpu_matching(name):
    anchors = get_anchors("ssd300")
    for seed in SEEDS[:2]:
        y_true = ground_truth(seed)
        y_pred = predictions(seed, y_true.shape, len(anchors))
        value, grad = _value_and_grad(
            MatchOnDevice(LOSSES[name](), "ssd300"), tf.constant(y_true), y_pred
        )
        want_value, want_grad = _value_and_grad(
            LOSSES[name](), pipeline_targets(y_true, anchors), y_pred
        )
        np.testing.assert_allclose(value, want_value, rtol=1e-6)
        assert_same_gradients(grad, want_grad, name)


_JAX_SCRIPT = """
import json, sys
import jax
import numpy as np
import keras
from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
from keras_scb.on_device import MatchOnDevice, encode_ground_truth
from keras_scb.anchors import get_anchors
assert "tensorflow" not in sys.modules, "on-device matching imported TensorFlow"
data = np.load({path!r})
anchors = get_anchors("ssd300")
out = {{"targets": np.asarray(jax.jit(lambda y: encode_ground_truth(y, anchors))(data["y_true"])).tolist()}}
for name, make in (("scb", ScaleBalancedLoss), ("multibox", MultiBoxLoss)):
    for way, loss, y in (("device", MatchOnDevice(make(), "ssd300"), data["y_true"]),
                         ("cpu", make(), data["targets"])):
        value, grad = jax.jit(jax.value_and_grad(lambda p: loss(y, p)))(data["y_pred"])
        out[name + "/" + way] = [float(value), np.asarray(grad).tolist()]
inputs = keras.Input(data["x"].shape[1:])
model = keras.Model(inputs, keras.layers.Dense(4 + 20 + 1)(inputs))
model.compile(optimizer="sgd", loss=MatchOnDevice(ScaleBalancedLoss(), "ssd300"))
out["fit"] = model.fit(data["x"], data["y_true"], batch_size=2, epochs=2, verbose=0).history["loss"]
print(json.dumps(out))
"""


def test_jax_backend(tmp_path, python_subprocess):
    """Under JAX (jitted) the same targets, the same loss and gradients as with
    the pipeline's targets, and a short fit."""
    anchors = get_anchors("ssd300")
    y_true = ground_truth(5)
    targets = pipeline_targets(y_true, anchors)
    y_pred = predictions(5, y_true.shape, len(anchors))
    x = np.random.default_rng(0).normal(size=(len(y_true), len(anchors), 8)).astype("float32")
    path = os.path.join(tmp_path, "batch.npz")
    np.savez(path, y_true=y_true, targets=targets, y_pred=y_pred, x=x)
    out = json.loads(
        python_subprocess(_JAX_SCRIPT.format(path=path), env={"KERAS_BACKEND": "jax"})
        .strip().splitlines()[-1]
    )
    assert_same_targets(np.array(out["targets"], np.float32), targets)
    for name, make in (("scb", ScaleBalancedLoss), ("multibox", MultiBoxLoss)):
        (value, grad), (want_value, want_grad) = out[name + "/device"], out[name + "/cpu"]
        np.testing.assert_allclose(value, want_value, rtol=1e-6, err_msg=name)
        assert_same_gradients(grad, want_grad, name)
        # Across backends only float summation order differs (as tests/test_losses.py).
        tf_value, _ = _value_and_grad(make(), targets, y_pred)
        np.testing.assert_allclose(value, tf_value, rtol=1e-5, err_msg=name)
    assert len(out["fit"]) == 2 and np.all(np.isfinite(out["fit"]))


def test_config_round_trip_and_short_fit(tmp_path):
    loss = MatchOnDevice(ScaleBalancedLoss(beta=2.0, apply_to="both"), "ssd300", iou_threshold=0.4)
    restored = keras.losses.deserialize(json.loads(json.dumps(keras.losses.serialize(loss))))
    assert isinstance(restored, MatchOnDevice) and isinstance(restored.loss, ScaleBalancedLoss)
    assert restored.get_config() == loss.get_config()
    assert restored.loss.beta == 2.0 and restored.iou_threshold == 0.4

    anchors = get_anchors("ssd300")
    y_true = ground_truth(7)
    x = np.random.default_rng(1).normal(size=(len(y_true), len(anchors), 8)).astype("float32")
    inputs = keras.Input((len(anchors), 8))
    model = keras.Model(inputs, keras.layers.Dense(4 + NUM_CLASSES + 1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    history = model.fit(x, y_true, batch_size=2, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    assert_keras_file_keeps_loss(model, loss, x, y_true, tmp_path)


def test_not_a_loss_is_named():
    with pytest.raises(TypeError, match="needs a loss object; got 'scb'"):
        MatchOnDevice("scb", "ssd300")


@pytest.mark.slow
def test_train_cli_matches_on_device(tmp_path):
    import keras_scb.callbacks  # noqa: F401  (the checkpoint's learning-rate schedule)
    from test_train import assert_ok, run, train_command

    result = run(train_command(tmp_path, "--match_on=device", "--loss=scb"))
    assert_ok(result)
    with open(os.path.join(tmp_path, "history.csv")) as f:
        assert np.isfinite(float(list(csv.DictReader(f))[0]["loss"]))
    model = keras.saving.load_model(os.path.join(tmp_path, "last.keras"))
    assert isinstance(model.loss, MatchOnDevice) and isinstance(model.loss.loss, ScaleBalancedLoss)

import json
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from keras_scb.anchors import get_anchors
from keras_scb.losses import (
    WEIGHTINGS,
    DetectionLoss,
    MultiBoxLoss,
    ScaleBalancedLoss,
    match_count_per_anchor,
    mean_normalise_per_image,
    multibox_loss,
    positive_anchor_weights,
    scale_balanced_weights,
)
from keras_scb.matching import encode_targets
from test_matching import pad_batch

NUM_CLASSES = 20


def make_batch(seed, images=3, preset="ssd300", logit_scale=3.0):
    rng = np.random.default_rng(seed)
    anchors = get_anchors(preset)
    boxes, classes = pad_batch([reference.random_boxes(rng) for _ in range(images)])
    y_true = encode_targets(boxes, classes, anchors).numpy()
    y_pred = np.concatenate(
        [
            rng.normal(0, 1.5, (images, len(anchors), 4)),
            rng.normal(0, logit_scale, (images, len(anchors), NUM_CLASSES + 1)),
        ],
        axis=-1,
    ).astype(np.float32)
    return y_true, y_pred


@pytest.fixture(scope="module")
def batch():
    y_true, y_pred = make_batch(0)
    assert (y_true[..., 4] > 0).sum() > 0
    return y_true, y_pred


@pytest.mark.parametrize("apply_to", ["classification", "both"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_loss_against_numpy_reference(batch, weighting, apply_to):
    y_true, y_pred = batch
    loss = ScaleBalancedLoss(weighting=weighting, apply_to=apply_to, alpha=1.0, beta=3.0)
    want = reference.multibox_loss(y_true, y_pred, weighting=weighting, apply_to=apply_to)
    np.testing.assert_allclose(float(loss(y_true, y_pred)), want, rtol=1e-5)


def test_other_constants_and_ratio():
    y_true, y_pred = make_batch(5, images=2)
    loss = ScaleBalancedLoss(alpha=0.5, beta=2.0, neg_pos_ratio=5)
    want = reference.multibox_loss(y_true, y_pred, alpha=0.5, beta=2.0, neg_pos_ratio=5)
    np.testing.assert_allclose(float(loss(y_true, y_pred)), want, rtol=1e-5)


def test_multibox_is_uniform_and_scb_differs(batch):
    y_true, y_pred = batch
    mb = float(MultiBoxLoss()(y_true, y_pred))
    np.testing.assert_allclose(mb, reference.multibox_loss(y_true, y_pred, "uniform"), rtol=1e-5)
    assert abs(float(ScaleBalancedLoss()(y_true, y_pred)) - mb) > 1e-3


def test_negative_mask_excludes_negative_candidates_only(batch):
    y_true, y_pred = batch
    mask = np.random.default_rng(1).random(y_true.shape[:2]) > 0.3
    assert (~mask & (y_true[..., 4] > 0)).any(), "a masked positive must still count"
    got = multibox_loss(y_true, y_pred, negative_mask=mask)
    want = reference.multibox_loss(y_true, y_pred, negative_mask=mask)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_valid_normalization_counts_positives_over_the_batch(batch):
    """Caffe's VALID mode: max(1, sum_b P_b); an image without positives adds 0."""
    y_true, y_pred = batch
    y_true = y_true.copy()
    y_true[0, :, 4:] = [0, -1]  # image 0: every anchor background
    positives = (y_true[..., 4] > 0).sum(axis=1)
    assert positives.sum() > 0
    per_image = reference.multibox_loss(y_true, y_pred)  # / sum_b max(P_b, 1)
    got = multibox_loss(y_true, y_pred, normalization="valid")
    want = per_image * np.maximum(positives, 1).sum() / positives.sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        multibox_loss(y_true, y_pred, normalization="batch")


def test_match_count_per_anchor_brute_force(batch):
    y_true, _ = batch
    matched = y_true[..., 5].astype(np.int32)
    positive = y_true[..., 4] > 0
    got = np.asarray(match_count_per_anchor(matched, positive))
    for b in range(len(matched)):
        for a in range(matched.shape[1]):
            want = (positive[b] & (matched[b] == matched[b, a])).sum() if positive[b, a] else 0
            assert got[b, a] == want


@pytest.mark.parametrize("seed", [0, 4, 9])
def test_match_count_per_anchor_same_in_graph_and_under_xla(seed):
    """TF graphs count over the positives only, XLA over every anchor: same counts."""
    y_true, _ = make_batch(seed, images=4)
    y_true[1, :, 4:] = [0, -1]  # an image without positives
    matched = tf.constant(y_true[..., 5].astype(np.int32))
    positive = tf.constant(y_true[..., 4] > 0)
    eager = match_count_per_anchor(matched, positive).numpy()
    spec = (tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None), tf.bool))
    graph = tf.function(match_count_per_anchor, input_signature=spec)
    xla = tf.function(match_count_per_anchor, jit_compile=True)
    np.testing.assert_array_equal(graph(matched, positive).numpy(), eager)
    np.testing.assert_array_equal(xla(matched, positive).numpy(), eager)

    def ops_of(function):
        traced = function.get_concrete_function(matched, positive).graph
        return {op.type for op in traced.get_operations()}

    assert "ScatterNd" in ops_of(graph) and "ScatterNd" not in ops_of(xla)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_positive_anchor_weights_same_in_graph_and_under_xla(weighting):
    """TF graphs weight the positives only and scatter, XLA weights every anchor."""
    y_true, _ = make_batch(3, images=4)
    y_true[2, :, 4:] = [0, -1]  # an image without positives
    matched = tf.constant(y_true[..., 5].astype(np.int32))
    positive = tf.constant(y_true[..., 4] > 0)
    counts = match_count_per_anchor(matched, positive).numpy()
    want = np.asarray(scale_balanced_weights(counts, 1.0, 3.0, weighting)) * (y_true[..., 4] > 0)
    if weighting == "scb_mean_normalised":
        want = np.asarray(mean_normalise_per_image(want, y_true[..., 4] > 0))

    def weights(m, p):
        return positive_anchor_weights(m, p, 1.0, 3.0, weighting)

    for function in (tf.function(weights), tf.function(weights, jit_compile=True)):
        np.testing.assert_allclose(function(matched, positive).numpy(), want, rtol=1e-6)


def test_graph_uses_unsorted_segment_sum(batch):
    y_true, y_pred = batch
    loss = ScaleBalancedLoss()
    graph = tf.function(loss).get_concrete_function(
        tf.TensorSpec((None,) + y_true.shape[1:]), tf.TensorSpec((None,) + y_pred.shape[1:])
    ).graph
    assert "UnsortedSegmentSum" in {op.type for op in graph.get_operations()}


def test_no_objects_gives_finite_loss_and_gradients():
    anchors = get_anchors("ssd300")
    y_true = encode_targets(np.zeros((2, 1, 4)), -np.ones((2, 1), np.int32), anchors)
    y_pred = tf.Variable(np.random.default_rng(0).normal(size=(2, len(anchors), 25)), dtype=tf.float32)
    for loss in (ScaleBalancedLoss(), ScaleBalancedLoss(apply_to="both"), MultiBoxLoss()):
        with tf.GradientTape() as tape:
            value = loss(y_true, y_pred)
        grad = tape.gradient(value, y_pred)
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(grad.numpy()))


def test_gradients_are_finite_and_weights_carry_none(batch):
    y_true, y_pred = batch
    y_true_t = tf.constant(y_true)
    y_pred_v = tf.Variable(y_pred)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(y_true_t)
        value = ScaleBalancedLoss(apply_to="both")(y_true_t, y_pred_v)
    assert np.all(np.isfinite(tape.gradient(value, y_pred_v).numpy()))
    # Only the regression targets can reach y_true; class ids and matched ids cannot.
    grad_true = tape.gradient(value, y_true_t).numpy()
    assert np.all(grad_true[..., 4:] == 0)


def test_mixed_precision_inputs_computed_in_float32(batch):
    y_true, y_pred = batch
    bf16 = tf.cast(y_pred, tf.bfloat16)
    loss = ScaleBalancedLoss()
    value = loss(y_true, bf16)
    assert value.dtype == tf.float32
    want = reference.multibox_loss(y_true, tf.cast(bf16, tf.float32).numpy())
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def _tiny_detector(num_anchors, num_classes=NUM_CLASSES):
    inputs = keras.Input((num_anchors, 8))
    return keras.Model(inputs, keras.layers.Dense(4 + num_classes + 1)(inputs))


def test_mixed_bfloat16_training_step():
    y_true, _ = make_batch(2, images=2)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _tiny_detector(y_true.shape[1])
        model.compile(optimizer="sgd", loss=ScaleBalancedLoss())
        x = np.random.default_rng(0).normal(size=(2, y_true.shape[1], 8)).astype("float32")
        history = model.fit(x, y_true, batch_size=2, epochs=1, verbose=0)
        assert model.output.dtype == "bfloat16"
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_config_round_trip_and_keras_file(tmp_path):
    loss = ScaleBalancedLoss(alpha=0.5, beta=2.0, neg_pos_ratio=4, apply_to="both", weighting="inverse_sqrt")
    config = json.loads(json.dumps(keras.losses.serialize(loss)))
    restored = keras.losses.deserialize(config)
    assert isinstance(restored, ScaleBalancedLoss)
    assert restored.get_config() == loss.get_config()
    mb = keras.losses.deserialize(keras.losses.serialize(MultiBoxLoss(neg_pos_ratio=2)))
    assert type(mb) is MultiBoxLoss and mb.neg_pos_ratio == 2 and mb.weighting == "uniform"
    # Siblings on a shared base, not one a special case of the other.
    assert isinstance(mb, DetectionLoss) and not isinstance(mb, ScaleBalancedLoss)
    assert set(mb.get_config()) == set(keras.losses.Loss().get_config()) | {
        "neg_pos_ratio", "class_weights"}
    weighted = ScaleBalancedLoss(class_weights=[0.5] * 19 + [3])
    restored = keras.losses.deserialize(json.loads(json.dumps(keras.losses.serialize(weighted))))
    assert restored.class_weights == weighted.class_weights == (0.5,) * 19 + (3.0,)

    y_true, _ = make_batch(3, images=2)
    model = _tiny_detector(y_true.shape[1])
    model.compile(optimizer="sgd", loss=loss)
    x = np.random.default_rng(1).normal(size=(2, y_true.shape[1], 8)).astype("float32")
    assert_keras_file_keeps_loss(model, loss, x, y_true, tmp_path)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"weighting": "log"}, "Unknown weighting 'log'"),
        ({"apply_to": "localization"}, "Unknown apply_to 'localization'"),
        ({"neg_pos_ratio": -1}, "neg_pos_ratio must be >= 0"),
        ({"class_weights": [1.0, -2.0]}, "class_weights must be finite and >= 0"),
        ({"class_weights": [1.0, float("nan")]}, "class_weights must be finite and >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScaleBalancedLoss(**kwargs)


def test_multibox_keras_file_and_bad_ratio(tmp_path):
    y_true, _ = make_batch(4, images=2)
    model = _tiny_detector(y_true.shape[1])
    loss = MultiBoxLoss(neg_pos_ratio=2)
    model.compile(optimizer="sgd", loss=loss)
    x = np.random.default_rng(2).normal(size=(2, y_true.shape[1], 8)).astype("float32")
    loaded = assert_keras_file_keeps_loss(model, loss, x, y_true, tmp_path)
    assert type(loaded.loss) is MultiBoxLoss and loaded.loss.neg_pos_ratio == 2
    with pytest.raises(ValueError, match="neg_pos_ratio must be >= 0"):
        MultiBoxLoss(neg_pos_ratio=-1)


_JAX_SCRIPT = """
import json, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax"
from keras_scb.losses import ScaleBalancedLoss, WEIGHTINGS
data = np.load(sys.argv[1] if len(sys.argv) > 1 else {path!r})
out = {{}}
for w in WEIGHTINGS:
    for apply_to in ("classification", "both"):
        out[w + "/" + apply_to] = float(ScaleBalancedLoss(weighting=w, apply_to=apply_to)(data["y_true"], data["y_pred"]))
import sys as _s
assert "tensorflow" not in _s.modules, "keras_scb.losses imported TensorFlow"
print(json.dumps(out))
"""


def test_jax_backend_matches_tensorflow(batch, tmp_path, python_subprocess):
    y_true, y_pred = batch
    path = os.path.join(tmp_path, "batch.npz")
    np.savez(path, y_true=y_true, y_pred=y_pred)
    out = python_subprocess(_JAX_SCRIPT.format(path=path), env={"KERAS_BACKEND": "jax"})
    jax_values = json.loads(out.strip().splitlines()[-1])
    assert len(jax_values) == 2 * len(WEIGHTINGS)
    for key, value in jax_values.items():
        weighting, apply_to = key.split("/")
        tf_value = float(ScaleBalancedLoss(weighting=weighting, apply_to=apply_to)(y_true, y_pred))
        np.testing.assert_allclose(value, tf_value, rtol=1e-5, err_msg=key)


_MIRRORED_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import keras
from keras_scb.losses import ScaleBalancedLoss
data = np.load({path!r})
x, y = data["x"], data["y_true"]
loss_fn = ScaleBalancedLoss()

def build():
    keras.utils.set_random_seed(7)
    inputs = keras.Input(x.shape[1:])
    return keras.Model(inputs, keras.layers.Dense(4 + 20 + 1)(inputs))

def step(model, xb, yb):
    with tf.GradientTape() as tape:
        loss = loss_fn(yb, model(xb))
    return loss, tape.gradient(loss, model.trainable_variables)

single = build()
loss1, grads1 = step(single, x, y)

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    mirrored = build()
dataset = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)))
xb, yb = next(iter(dataset))
run = tf.function(lambda a, b: strategy.run(step, args=(mirrored, a, b)))
loss2, grads2 = run(xb, yb)
loss2 = strategy.reduce("SUM", loss2, axis=None)
grads2 = [strategy.reduce("SUM", g, axis=None) for g in grads2]
print(json.dumps({{
    "loss1": float(loss1), "loss2": float(loss2),
    "grad_err": max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(grads1, grads2)),
    "grad_max": max(float(np.max(np.abs(a.numpy()))) for a in grads1),
}}))
"""


def test_mirrored_strategy_two_devices_equals_one(tmp_path, python_subprocess):
    # Uneven positives across the two halves, so a per-replica N would give a different answer.
    y_true, _ = make_batch(11, images=4)
    pos = (y_true[..., 4] > 0).sum(axis=1)
    assert pos[:2].sum() != pos[2:].sum()
    x = np.random.default_rng(2).normal(size=y_true.shape[:2] + (8,)).astype("float32")
    path = os.path.join(tmp_path, "batch.npz")
    np.savez(path, x=x, y_true=y_true)
    out = json.loads(python_subprocess(_MIRRORED_SCRIPT.format(path=path)).strip().splitlines()[-1])
    np.testing.assert_allclose(out["loss2"], out["loss1"], rtol=1e-5)
    assert out["grad_err"] <= 1e-5 * max(1.0, out["grad_max"])


def assert_keras_file_keeps_loss(model, loss, x, y_true, folder):
    """A compiled ``model`` saved to ``.keras`` and loaded back has ``loss``'s config
    and evaluates to the same loss value (rtol 1e-6); returns the loaded model."""
    path = os.path.join(folder, "tiny.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(
        loaded.evaluate(x, y_true, verbose=0), model.evaluate(x, y_true, verbose=0), rtol=1e-6
    )
    return loaded


@pytest.mark.parametrize("apply_to", ["classification", "both"])
@pytest.mark.parametrize("loss_class", [ScaleBalancedLoss, MultiBoxLoss])
def test_class_weights_against_loop_reference(batch, loss_class, apply_to):
    y_true, y_pred = batch
    class_weights = list(np.random.default_rng(7).uniform(0.2, 4.0, NUM_CLASSES))
    kwargs = {} if loss_class is MultiBoxLoss else {"apply_to": apply_to}
    weighting = loss_class.weighting if loss_class is MultiBoxLoss else "scb"
    got = float(loss_class(class_weights=class_weights, **kwargs)(y_true, y_pred))
    want = reference.multibox_loss(y_true, y_pred, weighting=weighting, class_weights=class_weights,
                                   apply_to=kwargs.get("apply_to", "classification"))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # All ones is the unweighted loss; the weights change it otherwise.
    ones = float(loss_class(class_weights=[1.0] * NUM_CLASSES, **kwargs)(y_true, y_pred))
    np.testing.assert_allclose(ones, float(loss_class(**kwargs)(y_true, y_pred)), rtol=1e-6)
    assert abs(got - ones) > 1e-3 * ones


def test_class_weights_need_one_value_per_class(batch):
    y_true, y_pred = batch
    with pytest.raises(ValueError, match=f"class_weights has 3 values for {NUM_CLASSES} classes"):
        ScaleBalancedLoss(class_weights=[1.0, 2.0, 3.0])(y_true, y_pred)

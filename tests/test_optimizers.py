"""The trainer's SGD: weight decay as Caffe and PyTorch apply it (coupled L2)."""

import keras
import numpy as np
import pytest

from keras_scb.optimizers import CoupledDecaySGD


LR, MOMENTUM, L2 = 0.1, 0.9, 0.05
W0, B0 = np.array([1.0, -2.0]), np.array([0.5])
GRADS = [(np.array([0.3, 0.1]), np.array([0.2])), (np.array([-0.4, 0.6]), np.array([-0.1]))]


def two_steps(optimizer):
    kernel = keras.Variable(W0, dtype="float32", name="kernel")
    bias = keras.Variable(B0, dtype="float32", name="bias")
    for gk, gb in GRADS:
        optimizer.apply_gradients(
            [(keras.ops.convert_to_tensor(gk, "float32"), kernel),
             (keras.ops.convert_to_tensor(gb, "float32"), bias)]
        )
    return keras.ops.convert_to_numpy(kernel), keras.ops.convert_to_numpy(bias)


def caffe_sgd(w, grads, decay):
    """Caffe's SGDSolver by hand: diff = g + decay * w; v = mu * v + lr * diff; w -= v."""
    v = np.zeros_like(w)
    for g in grads:
        v = MOMENTUM * v + LR * (g + decay * w)
        w = w - v
    return w


def test_two_momentum_steps_equal_caffe_with_l2_in_the_gradient():
    kernel, bias = two_steps(CoupledDecaySGD(l2=L2, learning_rate=LR, momentum=MOMENTUM))
    # Step 1: v = -0.1 * ([0.3, 0.1] + 0.05 * [1, -2]) = [-0.035, 0.0]; w = [0.965, -2.0].
    # Step 2: v = 0.9 * v - 0.1 * ([-0.4, 0.6] + 0.05 * w) = [0.003675, -0.05]; w = [0.968675, -2.05].
    np.testing.assert_allclose(kernel, [0.968675, -2.05], rtol=1e-6)
    np.testing.assert_allclose(kernel, caffe_sgd(W0, [g for g, _ in GRADS], L2), rtol=1e-6)
    # Biases get no decay (Caffe's decay_mult: 0).
    np.testing.assert_allclose(bias, caffe_sgd(B0, [g for _, g in GRADS], 0.0), rtol=1e-6)


def test_keras_decoupled_decay_is_not_the_references_update():
    """The reason for CoupledDecaySGD: Keras's weight_decay gives another trajectory."""
    keras_sgd = keras.optimizers.SGD(learning_rate=LR, momentum=MOMENTUM, weight_decay=L2)
    keras_sgd.exclude_from_weight_decay(var_names=["bias"])
    kernel, _ = two_steps(keras_sgd)
    assert not np.allclose(kernel, caffe_sgd(W0, [g for g, _ in GRADS], L2), rtol=1e-4)


def test_round_trip_through_keras_serialization():
    optimizer = CoupledDecaySGD(l2=3e-4, learning_rate=0.01, momentum=0.9, no_decay_names=["bias"])
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, CoupledDecaySGD)
    assert restored.l2 == pytest.approx(3e-4) and restored.no_decay_names == ("bias",)
    assert restored.momentum == pytest.approx(0.9)


def test_keras_weight_decay_is_refused():
    with pytest.raises(ValueError, match="takes l2, not weight_decay"):
        CoupledDecaySGD(l2=5e-4, weight_decay=5e-4)


@pytest.mark.parametrize("mode,expected", [("l2", CoupledDecaySGD), ("decoupled", keras.optimizers.SGD)])
def test_trainer_flag_selects_the_decay(mode, expected):
    from keras_scb import train
    from keras_scb.config import OptimizerConfig, ScheduleConfig

    optimizer = train.optimizer(OptimizerConfig(weight_decay_mode=mode, weight_decay=0.0005),
                                ScheduleConfig(), total_steps=10)
    assert type(optimizer) is expected
    if mode == "l2":
        assert optimizer.l2 == pytest.approx(5e-4) and optimizer.weight_decay is None
    else:
        assert optimizer.weight_decay == pytest.approx(5e-4)


def test_checkpoint_with_this_optimizer_loads_with_the_models_import(tmp_path, python_subprocess):
    """A .keras file saved with its optimizer names CoupledDecaySGD; ``import
    keras_scb.models`` (what every loader does) registers it."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=CoupledDecaySGD(l2=1e-3, learning_rate=0.1, momentum=0.9), loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    out = python_subprocess(
        "import keras, keras_scb.models\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        "print(type(m.optimizer).__name__, m.optimizer.l2, int(m.optimizer.iterations))\n"
    )
    assert out.split() == ["CoupledDecaySGD", "0.001", "1"]

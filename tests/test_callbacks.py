import json
import os

import keras
import numpy as np
import pytest

from keras_scb.callbacks import (
    AtomicModelCheckpoint,
    EpochBackup,
    WarmupStepDecay,
    atomic_write,
)


def test_warmup_step_decay_values_and_config():
    schedule = WarmupStepDecay(0.1, boundaries=(100, 200), decay_factor=0.1, warmup_steps=10,
                               warmup_factor=0.5)
    got = [float(schedule(s)) for s in (0, 5, 10, 99, 100, 199, 200)]
    np.testing.assert_allclose(got, [0.05, 0.075, 0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert again.get_config() == schedule.get_config()


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = os.path.join(tmp_path, "model.keras")

    def failing(path):
        with open(path, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert os.listdir(tmp_path) == []
    atomic_write(target, lambda p: open(p, "w").write("ok"))
    assert os.listdir(tmp_path) == ["model.keras"]


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


def test_checkpoint_best_and_last(tmp_path):
    model = _model()
    callback = AtomicModelCheckpoint(str(tmp_path), monitor="score", mode="max")
    callback.set_model(model)
    for epoch, score in enumerate([0.2, 0.5, 0.4]):
        callback.on_epoch_end(epoch, {"score": score})
    with open(os.path.join(tmp_path, "best.json")) as f:
        assert json.load(f) == {"monitor": "score", "value": 0.5, "epoch": 2}
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.keras", "last.keras"]
    keras.saving.load_model(os.path.join(tmp_path, "last.keras"))


def test_backup_restores_weights_optimizer_and_epoch(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    backup = os.path.join(tmp_path, "backup")

    full = _model()
    full.fit(x, y, epochs=4, batch_size=8, verbose=0, shuffle=False)

    first = _model()
    first_backup = EpochBackup(backup)
    first.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False,
              initial_epoch=first_backup.restore(first), callbacks=[first_backup])
    assert json.load(open(os.path.join(backup, "state.json")))["epoch"] == 2
    resumed = _model()
    resumed_backup = EpochBackup(backup)
    history = resumed.fit(x, y, epochs=4, batch_size=8, verbose=0, shuffle=False,
                          initial_epoch=resumed_backup.restore(resumed),
                          callbacks=[resumed_backup])
    assert len(history.history["loss"]) == 2  # only epochs 3 and 4 ran
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [n for n in os.listdir(backup) if n.endswith(".h5")] == ["epoch-00004.weights.h5"]

"""Training: `train(config)`'s errors and schedules, and the CLI's backends and crash recovery."""

import csv
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny detector on the synthetic data: seconds per step on two cores.
TINY = [
    "--model=mobilenetv2-ssdlite300", "--width_multiplier=0.35", "--backbone_weights=none",
    "--dataset=synthetic", "--synthetic_images=16", "--batch_size=4", "--steps_per_epoch=2",
    "--epochs=1", "--final_eval=false", "--verbose=2", "--learning_rate=0.01",
]


def train_command(model_dir, *extra):
    return [sys.executable, "-m", "keras_scb.train", f"--model_dir={model_dir}", *TINY, *extra]


def run(cmd, env=None, timeout=600):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--model=ssd301", "--model='ssd301' is not a detector"),
        ("--num_classes=7", "--num_classes=7 but --dataset=synthetic has"),
        ("--dataset=voc", "--data_dir is required with --dataset=voc"),
        ("--lr_schedule=cosine --lr_decay_steps=5", "--lr_decay_steps belongs to --lr_schedule=step"),
        ("--class_weights=1,2", "--class_weights=1,2: need 3 finite numbers >= 0, one per class"),
        ("--class_weights=1,x,2", "--class_weights=1,x,2: not a list of numbers"),
        ("--expand_prob=1.5", "--expand_prob must lie in [0, 1]; got 1.5."),
        ("--max_expand=0.5", "--max_expand must be >= 1; got 0.5."),
    ],
)
def test_bad_settings_give_clear_errors_before_anything_is_written(tmp_path, flag, message):
    from keras_scb.config import TrainConfig
    from keras_scb.train import train

    with pytest.raises(ValueError, match=re.escape(message)):
        train(TrainConfig.from_args([f"--model_dir={tmp_path / 'run'}", *TINY, *flag.split()]))
    assert not os.path.exists(tmp_path / "run")


def test_zoom_out_flags_reach_the_augmentation(monkeypatch):
    from keras_scb import train
    from keras_scb.config import TrainConfig
    from keras_scb.data import pipeline
    from keras_scb.data.augment import AugmentConfig

    def augment_of(*args):
        config = TrainConfig.from_args(["--model_dir=x", *args])
        seen = {}
        monkeypatch.setattr(pipeline, "training_pipeline", lambda *a, **k: seen.update(k))
        train._training_data(config, None, type("Detector", (), dict(
            anchors=None, image_size=(300, 300), targets="ssd"))())
        return seen["augment"]

    assert augment_of("--expand_prob=0.25", "--max_expand=2") == AugmentConfig(
        expand_prob=0.25, max_expand=2.0)
    assert augment_of() == AugmentConfig()
    assert augment_of("--noaugment") is None


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_learning_rate_schedules_warm_up_then_decay(schedule):
    from keras_scb import train
    from keras_scb.config import ScheduleConfig

    settings = ScheduleConfig(
        learning_rate=0.3, warmup_steps=10, lr_schedule=schedule,
        **(dict(lr_decay_steps=(60, 90), lr_decay=0.1) if schedule == "step" else {}),
    )
    rate = train.learning_rate_schedule(settings, total_steps=110)
    values = {s: float(rate(s)) for s in (0, 5, 10, 60, 95, 110)}
    assert values[0] == pytest.approx(0.1)
    assert values[5] == pytest.approx(0.2)
    assert values[10] == pytest.approx(0.3)
    if schedule == "step":
        assert values[60] == pytest.approx(0.03) and values[95] == pytest.approx(0.003)
    else:  # half-way through the 100 decay steps: half the rate; at the end: 0
        assert values[60] == pytest.approx(0.15, rel=1e-5)
        assert values[110] == pytest.approx(0.0, abs=1e-7)


def test_missing_data_dir_is_named(tmp_path):
    """The command line's one-line error (the other errors: in process, above)."""
    result = run(train_command(tmp_path, "--dataset=voc", "--data_dir=/nonexistent/VOC2007"))
    assert result.returncode != 0
    assert "'/nonexistent/VOC2007' is not a directory" in result.stderr


def test_tiny_training_under_jax_backend(tmp_path):
    # With --class_weights: the option reaches the loss in a real run (and under JAX).
    result = run(train_command(tmp_path, "--epochs=1", "--class_weights=0.5,1,2"),
                 env={"KERAS_BACKEND": "jax"})
    assert_ok(result)
    assert os.path.exists(os.path.join(tmp_path, "last.keras"))
    with open(os.path.join(tmp_path, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"]))


def test_kill_and_resume(tmp_path):
    """SIGKILL mid-epoch, then the same command finishes the planned epochs."""
    cmd = train_command(tmp_path, "--epochs=4", "--steps_per_epoch=6")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    state = os.path.join(tmp_path, "backup", "state.json")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(state) and json.load(open(state))["epoch"] >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.5)  # into epoch 3
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = json.load(open(state))["epoch"]
    assert 2 <= killed_at < 4
    # Whatever instant the kill hit, every checkpoint on disk is complete.
    import keras

    import keras_scb.models  # noqa: F401

    for path in glob.glob(os.path.join(tmp_path, "*.keras")):
        keras.saving.load_model(path, compile=False)
    assert not glob.glob(os.path.join(tmp_path, ".*")), os.listdir(tmp_path)

    result = run(cmd)
    assert_ok(result)
    assert json.load(open(state))["epoch"] == 4
    with open(os.path.join(tmp_path, "history.csv")) as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    # The resumed run trained only the epochs the killed one had not finished.
    assert epochs == list(range(4)), epochs

"""What training, checkpoints and file writing guarantee under faults (issue 11).

Each test name states one guarantee. Fast tests use a tiny Keras model in
process; the end-to-end training reproductions of the issue are marked slow.
"""

import csv
import json
import os
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_scb import fileio
from keras_scb.callbacks import (
    AtomicModelCheckpoint,
    EpochBackup,
    PeriodicEvaluation,
    trim_history,
)
from keras_scb.checkpoints import CheckpointError, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The setup: a tiny detector on synthetic data.
TRAIN = [
    "--dataset=synthetic", "--synthetic_images=8", "--width_multiplier=0.35",
    "--backbone_weights=none", "--batch_size=2", "--epochs=1", "--steps_per_epoch=3",
    "--nofinal_eval", "--verbose=2",
]
DIVERGING = ["--epochs=4", "--learning_rate=0.01", "--lr_schedule=step",
             "--lr_decay_steps=6", "--lr_decay=1e12"]


def run_module(module, *args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, *fragments):
    """Exit status 1, no traceback, and the error line names every fragment."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _model(learning_rate=0.01):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4)(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def _data():
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _finite(model):
    return all(np.isfinite(w).all() for w in model.get_weights())


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- 1. A NaN loss never destroys the last finite state -------------------------


class _Diverge(keras.callbacks.Callback):
    """Sets the weights to NaN at the end of epoch ``at`` (0-based)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            for variable in self.model.trainable_variables:
                variable.assign(np.full(variable.shape, np.nan, "float32"))


def test_non_finite_weights_never_reach_checkpoint_or_backup(tmp_path):
    model = _model()
    backup = EpochBackup(str(tmp_path / "backup"))
    callbacks = [_Diverge(at=1), AtomicModelCheckpoint(str(tmp_path)), backup]
    x, y = _data()
    model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=callbacks)
    assert backup.saved_epoch() == 1  # epoch 2 diverged; training stopped there
    assert _finite(load_checkpoint(tmp_path / "last.keras"))
    restored = _model()
    assert backup.restore(restored) == 1 and _finite(restored)


def test_non_finite_checkpoint_is_refused_on_load(tmp_path):
    model = _model()
    for variable in model.trainable_variables:
        variable.assign(np.full(variable.shape, np.inf, "float32"))
    path = str(tmp_path / "diverged.keras")
    model.save(path)
    with pytest.raises(CheckpointError, match="non-finite weights") as error:
        load_checkpoint(path)
    assert path in str(error.value)


@pytest.mark.slow
def test_nan_run_keeps_last_finite_state_and_rerun_fails_with_reason(tmp_path):
    """The issue's reproduction: the step decay of 1e12 makes epoch 3 diverge."""
    args = [f"--model_dir={tmp_path}", *TRAIN, *DIVERGING]
    first = run_module("keras_scb.train", *args)
    assert_one_line_error(first, "non-finite", "keep epoch 2")
    state = json.load(open(tmp_path / "backup" / "state.json"))
    assert state["epoch"] == 2
    assert _finite(load_checkpoint(tmp_path / "last.keras"))
    again = run_module("keras_scb.train", *args)
    assert_one_line_error(again, "non-finite", "keep epoch 2")
    with open(tmp_path / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == sorted(set(epochs)), epochs  # the rerun replaced its rows


# --- 2. Damaged backups, state files and checkpoints are named ------------------


def _backed_up(tmp_path, epochs=2):
    model = _model()
    backup = EpochBackup(str(tmp_path / "backup"))
    x, y = _data()
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[backup])
    state = json.load(open(backup.state_path))
    return backup, os.path.join(backup.backup_dir, state["weights"])


@pytest.mark.parametrize("damage", ["truncated", "random_bytes"])
def test_damaged_backup_is_detected_and_named(tmp_path, damage):
    backup, weights = _backed_up(tmp_path)
    size = os.path.getsize(weights)
    with open(weights, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            f.write(np.random.default_rng(0).bytes(1024))
    with pytest.raises(CheckpointError, match="damaged") as error:
        backup.restore(_model())
    assert weights in str(error.value)


def test_truncated_state_json_is_an_error_naming_it(tmp_path):
    backup, _ = _backed_up(tmp_path)
    text = open(backup.state_path).read()
    with open(backup.state_path, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON") as error:
        backup.restore(_model())
    assert backup.state_path in str(error.value)


def test_truncated_keras_file_is_named_as_truncated_not_missing(tmp_path):
    path = str(tmp_path / "last.keras")
    _model().save(path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="not a complete .keras archive") as error:
        load_checkpoint(path)
    assert path in str(error.value)


def test_resume_after_odd_epoch_keeps_every_history_column(tmp_path):
    """eval_every=2, resumed after epoch 1: the resumed rows have the val columns."""
    history = str(tmp_path / "history.csv")
    x, y = _data()

    def run(epochs):
        model = _model()
        backup = EpochBackup(str(tmp_path / "backup"))
        initial = backup.restore(model)
        trim_history(history, initial)
        evaluation = PeriodicEvaluation(lambda m: {"score": 0.5}, every=2)
        model.fit(x, y, epochs=epochs, initial_epoch=initial, batch_size=8, verbose=0,
                  callbacks=[evaluation, keras.callbacks.CSVLogger(history, append=True),
                             backup])

    run(1)
    run(4)
    with open(history) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    for row in rows:
        assert None not in row and all(v is not None for v in row.values()), row
        assert row["val_score"] != "NA", row  # logged (NaN on non-evaluated epochs)


def test_kill_during_backup_write_leaves_no_duplicate_row_or_hidden_file(tmp_path):
    """The files a kill inside the epoch-2 backup write leaves: CSV row 1, state at 1."""
    history = str(tmp_path / "history.csv")
    backup_dir = tmp_path / "backup"
    x, y = _data()
    model = _model()
    backup = EpochBackup(str(backup_dir))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0,
              callbacks=[keras.callbacks.CSVLogger(history, append=True), backup])
    with open(history, "a") as f:  # the CSV line of epoch 2 was written ...
        f.write("1,0.5\n")
    stale = backup_dir / f".epoch-00002.weights.h5.tmp-{_dead_pid()}-0abc.weights.h5"
    stale.write_bytes(b"\0" * 1000)  # ... the backup of epoch 2 was not
    resumed = _model()
    resumed_backup = EpochBackup(str(backup_dir))
    initial = resumed_backup.restore(resumed)
    trim_history(history, initial)
    resumed.fit(x, y, epochs=2, initial_epoch=initial, batch_size=8, verbose=0,
                callbacks=[keras.callbacks.CSVLogger(history, append=True), resumed_backup])
    with open(history) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]
    assert not [n for n in os.listdir(backup_dir) if n.startswith(".")]


def test_write_failure_names_the_path(tmp_path):
    target = str(tmp_path / "last.keras")

    def disk_full(path):
        with open(path, "w") as f:
            f.write("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(fileio.OutputError, match="No space left") as error:
        fileio.atomic_write(target, disk_full)
    assert target in str(error.value)
    assert os.listdir(tmp_path) == []


def test_file_size_limit_error_names_the_path(tmp_path):
    """A real EFBIG from ``ulimit -f`` (RLIMIT_FSIZE), in a child process."""
    target = str(tmp_path / "big.json")
    code = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from keras_scb import fileio\n"
        f"fileio.write_json(list(range(10000)), {target!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert f"OutputError: Cannot write {target}: File too large" in result.stderr
    assert os.listdir(tmp_path) == []


# --- 3. A checkpoint loads with the package import alone ------------------------


def test_compiled_detector_checkpoint_loads_with_models_import_alone(tmp_path):
    from keras_scb.anchors import AnchorSpec
    from keras_scb.losses import ScaleBalancedLoss
    from keras_scb.models import Detector
    from keras_scb.models.heads import ssd_head
    from keras_scb.schedules import WarmupStepDecay

    spec = AnchorSpec(96, (12, 6), (16, 40), (40, 72), ((2,), (2, 3)))
    images = keras.Input((96, 96, 3))
    x = keras.layers.Conv2D(8, 3, strides=8, padding="same")(images)
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    model = Detector(images, ssd_head([x, y], spec, 2, bn_momentum=0.99),
                     anchor_spec=spec, num_classes=2)
    model.compile(optimizer=keras.optimizers.SGD(WarmupStepDecay(0.1, (5,))),
                  loss=ScaleBalancedLoss())
    path = str(tmp_path / "last.keras")
    model.save(path)
    code = (
        "import keras, keras_scb.models\n"
        f"model = keras.saving.load_model({path!r})\n"
        "schedule = model.optimizer.get_config()['learning_rate']['class_name']\n"
        "print(schedule, type(model.loss).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["WarmupStepDecay", "ScaleBalancedLoss"]


# --- 4. Outputs honour the umask; temporaries of killed writers go away ---------


def test_checkpoints_and_files_honour_the_umask(tmp_path, umask_022):
    model = _model()
    checkpoint = AtomicModelCheckpoint(str(tmp_path), monitor="score")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"score": 1.0})
    from exporters import common

    common.write_labels(["a", "b"], tmp_path / "labels.txt")
    with fileio.atomic_output(tmp_path / "model.tflite") as temporary:
        open(temporary, "wb").write(b"tflite")
    with fileio.atomic_output(tmp_path / "saved_model", directory=True) as temporary:
        open(os.path.join(temporary, "saved_model.pb"), "wb").write(b"pb")
    for name in ("last.keras", "best.keras", "best.json", "labels.txt", "model.tflite"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
    assert stat.S_IMODE(os.stat(tmp_path / "saved_model").st_mode) == 0o755


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = tmp_path / f".model.sm.tmp-{_dead_pid()}-00ff"
    dead.mkdir()  # the empty folder a killed SavedModel export leaves
    live = tmp_path / f".model.tflite.tmp-{os.getpid()}-00aa.tflite"
    live.write_bytes(b"")
    keep = tmp_path / ".hidden-user-file"
    keep.write_bytes(b"")
    fileio.prepare_output(tmp_path / "model.sm")
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, keep.name])


def test_export_to_unwritable_folder_fails_before_conversion(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(fileio.OutputError, match="Cannot create the folder"):
        fileio.prepare_output(blocker / "model.tflite")
    if os.geteuid() != 0:  # root can write into a 0555 folder
        folder = tmp_path / "read_only"
        folder.mkdir(mode=0o555)
        with pytest.raises(fileio.OutputError, match="not writable"):
            fileio.prepare_output(folder / "model.tflite")


# --- 5. Private Keras API is confined and version-checked -----------------------


def test_private_keras_api_only_in_keras_compat():
    offenders = []
    for root in ("keras_scb", "exporters"):
        for folder, _, names in os.walk(os.path.join(REPO, root)):
            for name in names:
                if not name.endswith(".py") or name == "keras_compat.py":
                    continue
                text = open(os.path.join(folder, name)).read()
                for marker in ("keras.src", "_symbolic_build", "_initial_epoch",
                               "BackupAndRestore", "_collective_all_reduce",
                               "tensorflow.python"):
                    if marker in text:
                        offenders.append(f"{name}: {marker}")
    assert not offenders, offenders


def test_untested_keras_version_is_a_clear_error(monkeypatch):
    from keras_scb import keras_compat

    keras_compat.check_keras_version()  # the installed, pinned version passes
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    with pytest.raises(RuntimeError, match=r"tested with Keras 3\.15\.x; this is Keras 3\.99\.0"):
        keras_compat.check_keras_version()


# --- 6. Expected CLI errors are one line, no traceback --------------------------


def test_compare_with_malformed_metrics_json_names_the_file(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"coco": {"AP": 0.5}}))
    bad = tmp_path / "b.json"
    bad.write_text('{"coco": {"AP": 0.')
    result = run_module("keras_scb.evaluate", f"--compare={good},{bad}")
    assert_one_line_error(result, str(bad), "not valid JSON")


def test_evaluate_truncated_checkpoint_is_one_line_naming_it(tmp_path):
    path = tmp_path / "last.keras"
    path.write_bytes(b"PK\x03\x04 truncated")
    result = run_module("keras_scb.evaluate", f"--checkpoint={path}", "--dataset=synthetic")
    assert_one_line_error(result, str(path), "not a complete .keras archive")


def test_export_into_a_path_below_a_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "last.keras"
    _model().save(str(path))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_module("exporters.tflite", f"--checkpoint={path}",
                        f"--output={blocker}/model.tflite")
    assert_one_line_error(result, "Cannot create the folder", str(blocker))

"""Training callbacks: atomic checkpoints, the resumable backup, periodic evaluation.

Every file is written through `keras_scb.fileio` (a temporary file renamed into
place), so a process killed at any instant leaves either the previous complete
file or the new complete one. No checkpoint or backup is written from weights
with a NaN or an infinity: after a divergence the files keep the last finite
state.
"""

import csv
import hashlib
import io
import math
import os

import keras
from absl import logging

from keras_scb import label_map
from keras_scb.checkpoints import CheckpointError, check_finite, non_finite_variables
from keras_scb.fileio import (  # noqa: F401  (atomic_write re-exported)
    atomic_write,
    read_json,
    remove_stale_temporaries,
    short_repr,
    write_json,
    write_text,
)
from keras_scb.schedules import WARMUP_FACTOR, WarmupStepDecay  # noqa: F401  (re-exported)


def _finite_state(model, logs, what):
    """Whether the epoch's loss and every variable are finite; logs why not."""
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        logging.warning("Loss is %s: %s not written (it keeps the last finite state).", loss, what)
        return False
    bad = non_finite_variables(model)
    if bad:
        logging.warning("%d variables are not finite (e.g. %s): %s not written.",
                        len(bad), bad[0], what)
        return False
    return True


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves ``last.keras`` every epoch and ``best.keras`` when ``monitor`` improves.

    Unlike `keras.callbacks.ModelCheckpoint`, every write is atomic. The best value
    so far is kept in ``best.json`` so that a resumed run keeps comparing against it.

    Args:
        directory: where the files go.
        monitor: a key of the epoch logs; ``None`` saves only ``last.keras``.
        mode: ``"max"`` or ``"min"``.
    """

    def __init__(self, directory, monitor=None, mode="max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}.")
        self.directory = directory
        self.monitor = monitor
        self.mode = mode
        self._best_path = os.path.join(directory, "best.json")

    def _best_so_far(self):
        if not os.path.exists(self._best_path):
            return None
        record = read_json(self._best_path, "best-checkpoint record")
        value = record.get("value") if isinstance(record, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(
                f"best-checkpoint record {self._best_path}: field 'value' is {value!r}, not a "
                "finite number; delete the file to compare from the next evaluation."
            )
        return float(value)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not _finite_state(self.model, logs, "last.keras"):
            return
        atomic_write(os.path.join(self.directory, "last.keras"), self.model.save)
        if self.monitor is None or self.monitor not in logs:
            return
        value = float(logs[self.monitor])
        if value != value:  # NaN: not evaluated this epoch
            return
        best = self._best_so_far()
        better = best is None or (value > best if self.mode == "max" else value < best)
        if better:
            atomic_write(os.path.join(self.directory, "best.keras"), self.model.save)
            write_json(
                {"monitor": self.monitor, "value": value, "epoch": epoch + 1},
                self._best_path,
            )


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EpochBackup(keras.callbacks.Callback):
    """The resumable state of a run: `restore` it before ``fit``, save it every epoch.

    Each epoch's weights (with the optimizer state) go to a new file named by
    the epoch; ``state.json``, renamed into place last, names the current file,
    its epoch, its SHA-256 and the model's class names (the label map a resumed
    run must have too). A kill at any instant leaves a complete state: the
    previous one or the new one. A non-finite state is never saved, and a
    damaged one (checksum mismatch, unreadable, non-finite) is an error naming
    the file, never loaded silently. Used with plain public API::

        backup = EpochBackup(backup_dir)
        initial_epoch = backup.restore(model)
        model.fit(..., initial_epoch=initial_epoch, callbacks=[..., backup])

    Args:
        backup_dir: the folder of the state (created when needed).
    """

    def __init__(self, backup_dir):
        super().__init__()
        self.backup_dir = backup_dir
        self.state_path = os.path.join(backup_dir, "state.json")

    def saved_epoch(self):
        """Epochs done in the saved state (0 if none), without loading it."""
        if not os.path.exists(self.state_path):
            return 0
        return self._read_state()["epoch"]

    def saved_class_names(self):
        """The label map of the saved state: a tuple of names, or None if there
        is no state or it predates the stored names."""
        if not os.path.exists(self.state_path):
            return None
        names = self._read_state().get("class_names")
        return None if names is None else tuple(names)

    def _read_state(self):
        state = read_json(self.state_path, "Backup state")
        if not isinstance(state, dict):
            raise CheckpointError(f"Backup state {self.state_path} is not a JSON object.")
        problem = _state_problem(state)
        if problem:
            raise CheckpointError(f"Backup state {self.state_path}: {problem}.")
        return state

    def _check_network(self, state, model):
        """The state's network (registry name, input size, anchors) must be ``model``'s."""
        saved = state.get("network")
        if not saved:
            return  # a state older than the recorded network
        own = _network(model)
        differ = [f"{key} {saved.get(key)!r} (the model: {value!r})"
                  for key, value in own.items() if key in saved and saved[key] != value]
        if differ:
            raise CheckpointError(
                f"Backup {self.state_path} is of another network: {', '.join(differ)}; "
                f"resume it with its own --model/--anchors, or delete {self.backup_dir}."
            )

    def restore(self, model):
        """Loads the saved weights and optimizer state into ``model``.

        Call it after ``compile`` (under the distribution strategy's scope).

        Returns:
            The number of epochs done: ``fit``'s ``initial_epoch``.

        Raises:
            CheckpointError: the saved state is damaged; the message names the file.
            LabelMapError: the state was saved by a model of other class names.
        """
        remove_stale_temporaries(self.backup_dir)
        if not os.path.exists(self.state_path):
            return 0
        state = self._read_state()
        path = os.path.join(self.backup_dir, state["weights"])
        advice = f"delete {self.backup_dir} to train from scratch"
        self._check_network(state, model)
        saved_names = self.saved_class_names()
        names = getattr(model, "class_names", None)
        if saved_names is not None and names is not None:
            label_map.check_same(saved_names, names, f"Backup {self.state_path}",
                                 "the model to resume", advice)
        if not os.path.isfile(path):
            raise CheckpointError(f"Backup {path} named by {self.state_path} is missing; {advice}.")
        expected = state.get("sha256")
        if expected is not None and _sha256(path) != expected:
            raise CheckpointError(
                f"Backup {path} is damaged: its SHA-256 differs from the one in "
                f"{self.state_path}; {advice}."
            )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(path)
        except Exception as error:  # h5py and Keras raise many types for a bad file
            raise CheckpointError(f"Backup {path} cannot be loaded ({error}); {advice}.") from error
        check_finite(model, f"Backup {path}")
        return state["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        if not _finite_state(self.model, logs, "the backup"):
            # Weights can turn non-finite while the epoch's mean loss is still finite;
            # training on from them is pointless.
            self.model.stop_training = True
            return
        done = epoch + 1
        weights = f"epoch-{done:05d}.weights.h5"
        path = os.path.join(self.backup_dir, weights)
        atomic_write(path, self.model.save_weights)
        names = getattr(self.model, "class_names", None)
        write_json(
            {"epoch": done, "weights": weights, "sha256": _sha256(path),
             "class_names": None if names is None else list(names),
             "network": _network(self.model)},
            self.state_path,
        )
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name != weights and not name.startswith("."):
                os.remove(os.path.join(self.backup_dir, name))


def _network(model):
    """What fixes the shapes of a backup's meaning: registry name, input size, anchors
    (only those ``model`` has: a plain Keras model has none)."""
    spec = getattr(model, "anchor_spec", None)
    network = {"model": getattr(model, "registry_name", None)}
    if spec is not None:
        network.update(image_size=int(spec.image_size), num_anchors=int(len(model.anchors)))
    return {key: value for key, value in network.items() if value is not None}


def _state_problem(state):
    """Why a backup ``state.json`` cannot be used (its fields' types and ranges), or None."""
    epoch, weights, digest = state.get("epoch"), state.get("weights"), state.get("sha256")
    names = state.get("class_names")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return f"field 'epoch' is {epoch!r}, not a whole number >= 0"
    if not isinstance(weights, str) or not weights or os.path.basename(weights) != weights \
            or weights.startswith("."):
        return f"field 'weights' is {weights!r}, not a file name in the backup folder"
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        return f"field 'sha256' is {digest!r}, not a SHA-256 hex digest"
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return f"field 'class_names' is {short_repr(names)}, not a list of names"
    network = state.get("network")
    if network is not None and not isinstance(network, dict):
        return f"field 'network' is {network!r}, not an object"
    return None


def trim_history(path, epochs_done):
    """Drops the rows of ``history.csv`` for epochs ``>= epochs_done`` (0-based).

    A run killed after its CSV line but before its backup repeats that epoch
    when resumed; without this the history would hold it twice. A partial
    last line (killed mid-write) goes too.
    """
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if len(r) == len(header) and r[0].isdigit() and int(r[0]) < epochs_done]
    if len(kept) == len(body):
        return
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *kept])
    write_text(out.getvalue(), path)


class PeriodicEvaluation(keras.callbacks.Callback):
    """Adds ``evaluate(model)`` scalars to the epoch logs every ``every`` epochs.

    It runs after the first epoch of every run (a resumed one too), so a broken
    evaluation fails in minutes, not at the end, and so that
    `keras.callbacks.CSVLogger` (which fixes its columns on the first epoch it
    sees) gets a column per metric; epochs without an evaluation log NaN. Place it before the callbacks that read these logs.

    Args:
        evaluate: ``model -> {name: float}``.
        every: period in epochs; 0 disables the callback.
        prefix: prepended to each name, e.g. ``"val_"``.
    """

    def __init__(self, evaluate, every, prefix="val_"):
        super().__init__()
        self.evaluate = evaluate
        self.every = every
        self.prefix = prefix
        self._keys = ()

    def on_epoch_end(self, epoch, logs=None):
        if not self.every or logs is None:
            return
        done = epoch + 1
        last = done == self.params.get("epochs")
        if not self._keys or done % self.every == 0 or last:
            scalars = {self.prefix + k: v for k, v in self.evaluate(self.model).items()}
            self._keys = tuple(scalars)
            logs.update(scalars)
        else:
            logs.update({k: float("nan") for k in self._keys})

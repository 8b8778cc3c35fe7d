"""Training callbacks and the learning-rate schedule of the trainer.

Checkpoints are written to a temporary file in the same directory and renamed
into place, so a process killed at any instant leaves either the previous
complete file or the new complete file, never a half-written one.
"""

import json
import os
import tempfile

import keras


def atomic_write(path, write):
    """Calls ``write(tmp_path)``, then renames ``tmp_path`` onto ``path``.

    The temporary file lives in the destination directory (a rename is atomic
    only within one file system) and keeps ``path``'s extension, which Keras uses
    to pick the format. On failure the temporary file is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    suffix = next((s for s in (".weights.h5", ".keras", ".json") if base.endswith(s)), "")
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(data, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)

    atomic_write(path, write)


# Warm-up starts at this fraction of the rate (the step and cosine schedules alike).
WARMUP_FACTOR = 1.0 / 3


@keras.saving.register_keras_serializable(package="keras_scb")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``warmup_factor * lr`` then step decay (SSD's schedule).

    Args:
        learning_rate: base rate after warm-up.
        boundaries: steps at which the rate is multiplied by ``decay_factor``.
        warmup_steps: length of the linear warm-up (0 disables it).
    """

    def __init__(
        self,
        learning_rate,
        boundaries=(),
        decay_factor=0.1,
        warmup_steps=0,
        warmup_factor=WARMUP_FACTOR,
    ):
        self.learning_rate = float(learning_rate)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.learning_rate, "float32")
        for boundary in self.boundaries:
            rate = ops.where(step >= boundary, rate * self.decay_factor, rate)
        if self.warmup_steps > 0:
            progress = ops.minimum(step / self.warmup_steps, 1.0)
            rate = rate * (self.warmup_factor + (1.0 - self.warmup_factor) * progress)
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "boundaries": list(self.boundaries),
            "decay_factor": self.decay_factor,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }


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
        with open(self._best_path) as f:
            return json.load(f)["value"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
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
            _write_json(
                {"monitor": self.monitor, "value": value, "epoch": epoch + 1},
                self._best_path,
            )


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose state is never half-written.

    Keras writes the weights and the epoch counter in place, one after the other;
    a kill in between leaves a corrupt file or weights that disagree with the
    counter. Here each state is a new weights file named by its epoch, and a small
    JSON, renamed into place last, says which file is current.
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self._state_path = os.path.join(backup_dir, "state.json")

    def _load_model(self):
        if not os.path.exists(self._state_path):
            return
        with open(self._state_path) as f:
            state = json.load(f)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, state["weights"]))
        self.model._initial_epoch = state["epoch"]

    def _save_model(self):
        epoch = self._current_epoch
        weights = f"epoch-{epoch:05d}.weights.h5"
        atomic_write(os.path.join(self.backup_dir, weights), self.model.save_weights)
        _write_json({"epoch": epoch, "weights": weights}, self._state_path)
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name != weights and not name.startswith("."):
                os.remove(os.path.join(self.backup_dir, name))


class PeriodicEvaluation(keras.callbacks.Callback):
    """Adds ``evaluate(model)`` scalars to the epoch logs every ``every`` epochs.

    It runs after the first epoch too, so a broken evaluation fails in minutes, not
    at the end, and so that `keras.callbacks.CSVLogger` (which fixes its columns on
    the first epoch) gets a column per metric; epochs without an evaluation log
    NaN. Place it before the callbacks that read these logs.

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
        if done == 1 or done % self.every == 0 or last:
            scalars = {self.prefix + k: v for k, v in self.evaluate(self.model).items()}
            self._keys = tuple(scalars)
            logs.update(scalars)
        else:
            logs.update({k: float("nan") for k in self._keys})

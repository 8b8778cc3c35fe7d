"""A training's ``--model_dir``: one owner at a time, one recipe, a history of its changes.

- `lock`: a run folder is owned by one process, through an exclusive lock file
  ``run.lock`` holding the owner's pid (created with ``O_EXCL``). A second training,
  or an evaluation writing into the folder (`check_not_busy`), stops with a
  one-line `RunFolderBusy`. The lock of a process that is gone (killed) is taken
  over, with a message.
- `compare_recipe`: a resumed run keeps its recipe. The flags that fix the
  network (`ARCHITECTURE`) must match the run's ``flags.json``; those of the
  training recipe (`RECIPE`: loss, optimizer, schedule, batch...) may change only
  when allowed (``--allow_recipe_change``), and `record_flags` then keeps the
  change in the file's history instead of overwriting the record.
- `terminations_as_interrupts`: SIGTERM ends a training as SIGINT does (a
  ``KeyboardInterrupt``), so the trainer can say in one line how to resume.

Files go through `keras_scb.fileio` (atomic writes).
"""

import contextlib
import datetime
import os
import signal
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional

from keras_scb.fileio import OutputError, process_alive, read_json, write_json

LOCK_FILE = "run.lock"
FLAGS_FILE = "flags.json"

# Flags that fix the network and its targets: a backup of another network must
# never be resumed (the image size and the anchors follow from these).
ARCHITECTURE = ("model", "anchors", "width_multiplier", "num_classes", "class_names")
# Flags of the training recipe: changing one mid-run makes another experiment.
RECIPE = (
    "dataset", "train_split", "loss", "alpha", "beta", "weighting", "apply_to", "neg_pos_ratio",
    "class_weights", "scb_on", "optimizer", "learning_rate", "momentum", "weight_decay",
    "weight_decay_mode", "warmup_steps", "lr_schedule", "lr_decay_steps", "lr_decay", "clipnorm",
    "batch_size", "steps_per_epoch", "bn_momentum", "augment", "expand_prob", "max_expand",
    "keep_difficult", "mixed_precision", "backbone_weights",
)
# The cosine schedule anneals to 0 at the last step: there the epochs are recipe.
COSINE_RECIPE = ("epochs",)


class RunFolderBusy(OutputError):
    """Another live process owns the run folder."""


class RecipeChanged(ValueError):
    """A resume with other flags than the run's ``flags.json``."""


# The run folders this process holds: lock file -> pid.
_HELD: Dict[str, int] = {}


def _lock_owner(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else -1  # -1: a lock file not written by `lock`


def lock(model_dir: str) -> str:
    """Takes ``model_dir`` for this process; `release` (or the process's end) gives it back.

    Idempotent in one process (a second call is a no-op).

    Raises:
        RunFolderBusy: a live process holds it; the message names its pid.
    """
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(model_dir, LOCK_FILE))
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner == os.getpid():
                _HELD[path] = owner
                return path
            if owner is not None and owner > 0 and process_alive(owner):
                raise RunFolderBusy(
                    f"--model_dir={model_dir} is in use by process {owner} (its lock {path}); "
                    "wait for it to end, or train into another --model_dir."
                ) from None
            print(f"{path}: taking over the lock of process {owner}, which is gone.",
                  file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue  # O_EXCL again: of two processes taking over, one wins
        with os.fdopen(descriptor, "w") as f:
            f.write(f"{os.getpid()}\n")
        _HELD[path] = os.getpid()
        return path


def release(model_dir: str) -> None:
    """Removes this process's lock of ``model_dir`` (nothing if it holds none)."""
    path = os.path.abspath(os.path.join(model_dir, LOCK_FILE))
    if _HELD.pop(path, None) is not None and _lock_owner(path) == os.getpid():
        os.remove(path)


def check_not_busy(folder: str) -> None:
    """Raises `RunFolderBusy` if ``folder`` or the folder holding it is a run
    folder that another live process owns (an evaluation must not write there)."""
    folder = os.path.abspath(folder)
    for candidate in (folder, os.path.dirname(folder)):
        owner = _lock_owner(os.path.join(candidate, LOCK_FILE))
        if owner is not None and owner > 0 and owner != os.getpid() and process_alive(owner):
            raise RunFolderBusy(
                f"{folder} is in the run folder {candidate}, which process {owner} is training "
                "into; wait for it to end, or pass another --output_dir."
            )


def read_flags(model_dir: str) -> Optional[Dict[str, Any]]:
    """The flags recorded in ``model_dir/flags.json`` (None if there is none).

    Reads both the record with a history (``{"flags": ..., "history": [...]}``)
    and the older plain flag dict.

    Raises:
        ValueError: naming the file, if it is malformed.
    """
    path = os.path.join(model_dir, FLAGS_FILE)
    if not os.path.exists(path):
        return None
    record = read_json(path, "run record")
    flags = record.get("flags", record) if isinstance(record, dict) else None
    if not isinstance(flags, dict):
        raise ValueError(f"run record {path}: field 'flags' is not a dict of flag values.")
    return flags


def _comparable(value: Any) -> Any:
    # flags.json holds JSON (tuples became lists; objects their str).
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def changed_flags(recorded: Mapping[str, Any], current: Mapping[str, Any],
                  names) -> Dict[str, List[Any]]:
    """``{flag: [recorded, current]}`` of the ``names`` that differ (a flag the
    record lacks, from an older version, is not compared)."""
    return {
        name: [recorded[name], _comparable(current.get(name))] for name in names
        if name in recorded and _comparable(recorded[name]) != _comparable(current.get(name))
    }


def _describe(changes: Mapping[str, List[Any]]) -> str:
    return ", ".join(f"--{name}={new!r} (the run's: {old!r})" for name, (old, new) in changes.items())


def compare_recipe(model_dir: str, current: Mapping[str, Any], allow_change: bool,
                   schedule: str = "step") -> Dict[str, List[Any]]:
    """Checks that resuming ``model_dir`` with the flags ``current`` keeps its recipe.

    Args:
        model_dir: the run folder (its ``flags.json``).
        current: this process's flag values.
        allow_change: ``--allow_recipe_change``: a changed `RECIPE` flag is allowed.
        schedule: ``--lr_schedule`` (under ``cosine`` the epochs are recipe).

    Returns:
        The allowed changes, ``{flag: [recorded, current]}`` (for `record_flags`).

    Raises:
        RecipeChanged: an `ARCHITECTURE` flag differs, or a `RECIPE` flag differs
            and not ``allow_change``; the message names each flag and both values.
    """
    recorded = read_flags(model_dir)
    if recorded is None:
        return {}
    where = os.path.join(model_dir, FLAGS_FILE)
    network = changed_flags(recorded, current, ARCHITECTURE)
    if network:
        raise RecipeChanged(
            f"Resuming --model_dir={model_dir} with another network: {_describe(network)} "
            f"(recorded in {where}); its backup cannot be that network's: use a new --model_dir."
        )
    recipe = changed_flags(
        recorded, current, RECIPE + (COSINE_RECIPE if schedule == "cosine" else ())
    )
    if recipe and not allow_change:
        raise RecipeChanged(
            f"Resuming --model_dir={model_dir} with another recipe: {_describe(recipe)} "
            f"(recorded in {where}); rerun with the run's flags, pass --allow_recipe_change "
            "to continue with these (recorded in its history), or use a new --model_dir."
        )
    return recipe


def record_flags(model_dir: str, current: Mapping[str, Any], epoch: int,
                 changes: Mapping[str, List[Any]]) -> None:
    """Writes ``flags.json``: ``{"flags": current, "history": [...]}``.

    Call it once the backup is restored (a failed resume leaves the record as
    it was). The history keeps every start of the run: the epoch it started
    from, when, and the recipe changes it was allowed (`compare_recipe`).
    """
    path = os.path.join(model_dir, FLAGS_FILE)
    history = []
    if os.path.exists(path):
        record = read_json(path, "run record")
        if isinstance(record, dict) and isinstance(record.get("history"), list):
            history = record["history"]
    history.append({
        "epoch": epoch,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "changes": {name: {"from": old, "to": new} for name, (old, new) in changes.items()},
    })
    write_json({"flags": {k: _comparable(v) for k, v in current.items()}, "history": history},
               path)


@contextlib.contextmanager
def terminations_as_interrupts() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` (as SIGINT does) in the main thread
    while inside; the previous handler comes back on exit."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

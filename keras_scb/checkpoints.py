"""Loading ``.keras`` checkpoints with errors that name the file, and the finite-weights check.

A checkpoint, backup or export is never written from weights with a NaN or an
infinity (`non_finite_variables` is the check), and a checkpoint that does not
load names its path and why: missing, not a complete ``.keras`` archive
(truncated), or holding non-finite weights.

A checkpoint's label map is the ``class_names`` stored in it, else (a checkpoint
written before they were stored) the ``labels.txt`` the trainer wrote next to
it; when both exist they must agree (`checkpoint_class_names`).
"""

import json
import logging
import os
import zipfile
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from keras_scb import label_map


class CheckpointError(ValueError):
    """A checkpoint or backup that cannot be used; the message names the file."""


def non_finite_variables(model: Any) -> List[str]:
    """Paths of ``model``'s variables (weights and BatchNorm statistics) holding NaN or inf."""
    import keras

    return [
        variable.path
        for variable in model.variables
        if not np.isfinite(keras.ops.convert_to_numpy(variable.value)).all()
    ]


def check_finite(model: Any, source: str) -> None:
    """Raises `CheckpointError` naming ``source`` if ``model`` has a non-finite variable."""
    bad = non_finite_variables(model)
    if bad:
        raise CheckpointError(
            f"{source} holds non-finite weights ({len(bad)} variables, e.g. {bad[0]}); "
            "it comes from a diverged training run."
        )


def load_checkpoint(path: str, compile: bool = False) -> Any:
    """``keras.saving.load_model(path)`` of a detector checkpoint, checked.

    Raises:
        CheckpointError: ``path`` is missing, not a complete ``.keras`` zip
            archive, does not deserialise, or holds non-finite weights.
    """
    import keras

    import keras_scb.models  # noqa: F401  (registers the detector, loss and schedule classes)

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"Checkpoint {path} is not a complete .keras archive "
            f"({os.path.getsize(path)} bytes; truncated or not a Keras file)."
        )
    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as error:  # Keras raises many types for a damaged archive
        raise CheckpointError(f"Checkpoint {path} cannot be loaded: {error}") from error
    check_finite(model, f"Checkpoint {path}")
    return model


def load_detector_checkpoint(path: str) -> Any:
    """`load_checkpoint` of a file that must hold a `keras_scb.models.Detector`
    (what evaluation, the exporters and ``predict`` take).

    Raises:
        CheckpointError: as `load_checkpoint`, or the model is a plain Keras
            model (no anchors, layout or label map); the message names the file.
    """
    from keras_scb.models.detector import Detector

    model = load_checkpoint(path)
    if not isinstance(model, Detector):
        raise CheckpointError(
            f"Checkpoint {os.fspath(path)} holds a {type(model).__name__} {model.name!r}, not a "
            "keras_scb Detector (no anchors or label map): give one built by "
            "keras_scb.models.build_detector or trained by keras_scb.train."
        )
    return model


def stored_class_names(path: str) -> Optional[Tuple[str, ...]]:
    """The ``class_names`` stored in the ``.keras`` file ``path``, or None.

    Read from the archive's ``config.json`` (the `Detector` config) without
    building the model, so that a command can check the label map first.

    Raises:
        CheckpointError: ``path`` is not a readable ``.keras`` archive.
    """
    names = _stored_config(path).get("config", {}).get("class_names")
    return None if names is None else tuple(str(name) for name in names)


def _stored_config(path) -> dict:
    """The ``config.json`` of the ``.keras`` archive ``path`` (the model's config)."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"Checkpoint {path} has no readable config.json: {error}") from error
    return config if isinstance(config, dict) else {}


def init_checkpoint_options(path, model_name: str) -> dict:
    """What a run starting from the checkpoint ``path`` builds its ``model_name`` with.

    The checkpoint must be a ``model_name``; its input normalisation comes
    along (its weights were trained with it), read from its ``config.json``
    before anything is built, so that a wrong file stops a run at once.

    Returns:
        Builder keyword arguments: ``{"normalization": config}`` for a network
        with a `CaffeImageNetNormalization`, else ``{}``.

    Raises:
        CheckpointError: missing, not a ``.keras`` archive, or another detector.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--init_checkpoint={path} does not exist.")
    config = _stored_config(path).get("config", {})
    if config.get("registry_name") != model_name:
        raise CheckpointError(
            f"--init_checkpoint={path} is a {config.get('registry_name')!r}, not the "
            f"--model={model_name} of this run."
        )
    for layer in config.get("layers", []):
        if layer.get("class_name") == "CaffeImageNetNormalization":
            normalization = layer.get("config", {}).get("normalization")
            return {} if normalization is None else {"normalization": normalization}
    return {}


def init_from_checkpoint(model, path) -> str:
    """Sets every weight of ``model`` that the checkpoint ``path`` has.

    A layer is taken when the checkpoint has a layer of that name whose weights
    have the same shapes; the others (a head for another class count) keep
    their initialisation.

    Returns:
        One line saying what was loaded and what is new.
    """
    source = load_checkpoint(path)
    loaded, new = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:  # no layer of that name
            weights = None
        if weights is not None and [w.shape for w in weights] == [
            tuple(w.shape) for w in layer.weights
        ]:
            layer.set_weights(weights)
            loaded.append(layer.name)
        else:
            new.append(layer.name)
    line = (
        f"--init_checkpoint={path}: {len(loaded)} of {len(loaded) + len(new)} layers "
        f"loaded ({source.num_classes} classes there, {model.num_classes} here)"
    )
    if new:
        line += f"; newly initialised: {', '.join(new)}"
    if getattr(source, "anchor_spec", None) != model.anchor_spec:
        line += "; this run's anchors differ from the checkpoint's (--anchors sets them)"
    return line + "."


def checkpoint_class_names(path: str) -> Optional[Tuple[str, ...]]:
    """The label map of the checkpoint ``path``: the names stored in it, else
    ``labels.txt`` next to it; None if it has neither.

    Raises:
        LabelMapError: both exist and differ (the message names both lists).
    """
    stored = stored_class_names(path)
    beside = label_map.labels_beside(path)
    if stored is not None and beside is not None:
        label_map.check_same(stored, beside, f"checkpoint {path}", label_map.labels_path(path))
    return stored if stored is not None else beside


def check_checkpoint_classes(
    path: str, num_classes: int, class_names: Sequence[str], source: str
) -> None:
    """The checkpoint ``path`` (of ``num_classes`` classes) must predict the
    label map ``class_names`` of ``source`` (e.g. a dataset split).

    A checkpoint with neither stored names nor ``labels.txt`` (older than the
    stored names, moved without its folder) cannot be checked name by name:
    then only the class count is compared, with a warning.

    Raises:
        LabelMapError: the names (or, without names, the counts) differ.
    """
    names = checkpoint_class_names(path)
    if names is not None:
        label_map.check_same(names, class_names, f"checkpoint {path}", source)
        return
    if num_classes != len(class_names):
        raise label_map.LabelMapError(
            f"{source}: {len(class_names)} classes {list(class_names)}, but checkpoint "
            f"{path} predicts {num_classes} (it stores no class names)"
        )
    logging.getLogger(__name__).warning(
        "Checkpoint %s stores no class names and has no %s beside it: only the class "
        "count (%d) was checked against %s, not the names.",
        path, label_map.LABELS_FILE, num_classes, source,
    )

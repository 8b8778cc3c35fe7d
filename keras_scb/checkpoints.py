"""Loading ``.keras`` checkpoints with errors that name the file, and the finite-weights check.

A checkpoint, backup or export is never written from weights with a NaN or an
infinity (`non_finite_variables` is the check), and a checkpoint that does not
load names its path and why: missing, not a complete ``.keras`` archive
(truncated), or holding non-finite weights.
"""

import os
import zipfile
from typing import List

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint or backup that cannot be used; the message names the file."""


def non_finite_variables(model) -> List[str]:
    """Paths of ``model``'s variables (weights and BatchNorm statistics) holding NaN or inf."""
    import keras

    return [
        variable.path
        for variable in model.variables
        if not np.isfinite(keras.ops.convert_to_numpy(variable.value)).all()
    ]


def check_finite(model, source: str) -> None:
    """Raises `CheckpointError` naming ``source`` if ``model`` has a non-finite variable."""
    bad = non_finite_variables(model)
    if bad:
        raise CheckpointError(
            f"{source} holds non-finite weights ({len(bad)} variables, e.g. {bad[0]}); "
            "it comes from a diverged training run."
        )


def load_checkpoint(path, compile: bool = False):
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

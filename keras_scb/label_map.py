"""The label map: class names in class-id order, compared in one place.

A label map is fixed once per dataset (`keras_scb.flags.load_split`), stored
with the model (`keras_scb.models.Detector.class_names`), written as
``labels.txt`` (one name a line) next to checkpoints and exports, and compared
by `check_same` wherever a model meets a dataset or a given list: training
(resume), evaluation, the exports and ``predict``. Order matters: the same
names in another order give the ids other meanings, so it is a mismatch.
"""

import collections
import os
from typing import Optional, Sequence, Tuple

from keras_scb.fileio import abbreviate, read_text

# One class name a line, in id order: the file the trainer writes into its
# model_dir, the exports next to (or into) their model, and a VOC root may hold.
LABELS_FILE = "labels.txt"


class LabelMapError(ValueError):
    """Two label maps that must agree differ, or a labels file is malformed."""


def read_labels(path: str) -> Tuple[str, ...]:
    """Class names from a labels file (one per line, blank lines ignored).

    Raises:
        LabelMapError: naming the file if it is empty or repeats a name.
        ValueError: naming the file if it is missing or not UTF-8 text.
    """
    names = tuple(line.strip() for line in read_text(path).splitlines() if line.strip())
    repeated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    if not names or repeated:
        problem = f"repeated names {abbreviate(repeated)}" if repeated else "no class names"
        raise LabelMapError(f"{path}: malformed labels file: {problem}")
    return names


def labels_path(model_path: str) -> str:
    """The ``labels.txt`` of a model: inside a folder (a SavedModel, a
    ``model_dir``), next to a file (a ``.keras`` or ``.tflite``)."""
    model_path = os.fspath(model_path)
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    return os.path.join(folder, LABELS_FILE)


def labels_beside(model_path: str) -> Optional[Tuple[str, ...]]:
    """`read_labels` of `labels_path` (``model_path``), or None if there is none."""
    path = labels_path(model_path)
    return read_labels(path) if os.path.isfile(path) else None


def check_same(
    expected: Sequence[str],
    actual: Sequence[str],
    expected_source: str,
    actual_source: str,
    advice: str = "",
) -> None:
    """Raises `LabelMapError` unless ``actual`` is ``expected``, name for name, in order.

    The message names both sources and both lists, e.g. ``--dataset=bccd split
    test: class names ['RBC', 'WBC', 'Platelets'] differ from checkpoint
    runs/x/last.keras: ['rectangle', 'ellipse', 'triangle'] (no name in
    common)``, then ``advice`` if given.
    """
    expected = tuple(str(name) for name in expected)
    actual = tuple(str(name) for name in actual)
    if expected == actual:
        return
    raise LabelMapError(
        f"{actual_source}: class names {abbreviate(actual)} differ from {expected_source}: "
        f"{abbreviate(expected)} ({_difference(expected, actual)})" + (f"; {advice}" if advice else "")
    )


def _difference(expected, actual):
    if sorted(expected) == sorted(actual):
        return "the same names in another order: the ids would change meaning"
    if len(expected) != len(actual):
        return f"{len(actual)} classes, not {len(expected)}"
    if not set(expected) & set(actual):
        return "no name in common"
    differ = [(k, e, a) for k, (e, a) in enumerate(zip(expected, actual)) if e != a]
    return "; ".join(f"id {k}: {a!r}, not {e!r}" for k, e, a in differ[:3])

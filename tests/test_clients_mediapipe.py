"""Real clients: MediaPipe Tasks' ObjectDetector takes the TFLite exports as written.

Optional (``pip install '.[clients]'``; ``make test-clients`` runs ``pytest -m
clients``): skipped when mediapipe is not installed. The exports of a small
detector (`export_testing.make_detector`: random weights, calibrated BatchNorm,
scores up to ~0.98) must load in ``ObjectDetector`` with nothing but the file, and
give the LiteRT interpreter's detections: same class, IoU >= 0.9 (MediaPipe's
boxes are integer pixels), score within 1e-3, compared as sets. MediaPipe gives
each detection a class name or a class index, never both (`exporters.metadata`):
the class compared is the name's line in ``labels.txt`` for the default export,
``Category.index`` itself for one exported with ``category_labels="indices"``.

Budget: ~60 s on 2 cores (two fp32 and an int8 conversion).
"""

import numpy as np
import pytest

import export_testing

pytestmark = pytest.mark.clients
mediapipe = pytest.importorskip(
    "mediapipe", reason="mediapipe is not installed (pip install '.[clients]')"
)

from exporters import mediapipe_check, tflite  # noqa: E402

CLASS_NAMES = ("RBC", "WBC", "Platelets")
SCORE_THRESHOLD = 0.5


@pytest.fixture(scope="module")
def detector():
    return export_testing.make_detector(seed=0)


@pytest.fixture(scope="module")
def images():
    return export_testing.images(4, seed=7)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_object_detector_gives_the_interpreter_detections(
    detector, images, precision, tmp_path_factory
):
    path = tmp_path_factory.mktemp(precision) / "model.tflite"
    calibration = export_testing.images(16, seed=3) if precision == "int8" else None
    tflite.export_tflite(
        detector, path, precision, calibration, CLASS_NAMES, **export_testing.DECODER
    )
    result = mediapipe_check.compare(path, images, SCORE_THRESHOLD)
    assert result["total"] >= 10  # enough detections for the comparison to mean something
    assert result["matched"] == result["total"] == result["mediapipe_total"]
    assert result["min_iou"] >= 0.9
    assert result["max_score_diff"] <= 1e-3
    # MediaPipe names every detection and, having named it, drops its label id.
    assert result["named"] == result["total"]
    assert result["indexed"] == 0


def test_object_detector_gives_class_indices(detector, images, tmp_path):
    path = tmp_path / "model.tflite"
    tflite.export_tflite(
        detector, path, "fp32", None, CLASS_NAMES, category_labels="indices",
        **export_testing.DECODER,
    )
    result = mediapipe_check.compare(path, images, SCORE_THRESHOLD)
    assert result["total"] >= 10
    # Every detection has Category.index set, and it is the interpreter's class
    # id: the detections are matched on it (no name to fall back on).
    assert result["indexed"] == result["mediapipe_total"] == result["total"]
    assert result["named"] == 0
    assert result["matched"] == result["total"]
    assert result["min_iou"] >= 0.9
    assert result["max_score_diff"] <= 1e-3

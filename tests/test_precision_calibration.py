"""Precision / false positives by scale and score calibration (issue 15), on a
hand-made case whose every number is worked out in the comments."""

import os

import numpy as np
import pytest

from keras_scb import calibration
from keras_scb import evaluation as ev

H, W = 100, 200


def _rel(pixel_boxes):
    return np.asarray(pixel_boxes, float).reshape(-1, 4) / [W, H, W, H]


def hand_case():
    """Image a: a small (20x20) and a medium (50x50) object of class 0, a large
    (100x100) of class 1 and a difficult class-0 object; image b: nothing."""
    gts = [
        ev.ImageGroundTruth("a", H, W, _rel([[10, 10, 30, 30], [40, 20, 90, 70],
                                             [95, 0, 195, 100], [150, 60, 180, 90]]),
                            [0, 0, 1, 0], [False, False, False, True]),
        ev.ImageGroundTruth("b", H, W, np.zeros((0, 4)), []),
    ]
    dets = [ev.ImageDetections("a", _rel([
        [10, 10, 30, 30],    # 0.9  class 0: TP, small
        [11, 10, 31, 30],    # 0.5  class 0: repeat hit on the small object, FP, own area small
        [40, 20, 90, 70],    # 0.4  class 1 on the class-0 medium object: FP, own area medium
        [95, 0, 195, 100],   # 0.2  class 1: TP, large
        [0, 80, 10, 90],     # 0.05 class 0: FP on background, own area 100 px: small
        [150, 60, 180, 90],  # 0.95 class 0: hits the difficult object, ignored
    ]), [0.9, 0.5, 0.4, 0.2, 0.05, 0.95], [0, 0, 1, 1, 0, 0])]
    return gts, dets


def test_precision_by_scale_hand_case():
    gts, dets = hand_case()
    got = ev.precision_by_scale(gts, dets, score_thresholds=(0.01, 0.1, 0.3))
    assert got["num_images"] == 2

    def pair(t, scale):
        c = got["thresholds"][t][scale]
        return c["true_positives"], c["false_positives"]

    # score >= 0.3: the TP and repeat hit on the small object, the wrong-class medium.
    assert [pair("0.3", s) for s in ("small", "medium", "large", "all")] == [
        (1, 1), (0, 1), (0, 0), (1, 2)]
    # >= 0.1 adds the large TP; >= 0.01 adds the small background FP.
    assert [pair("0.1", s) for s in ("small", "medium", "large", "all")] == [
        (1, 1), (0, 1), (1, 0), (2, 2)]
    assert [pair("0.01", s) for s in ("small", "medium", "large", "all")] == [
        (1, 2), (0, 1), (1, 0), (2, 3)]


def test_false_positive_scale_follows_the_image_size():
    """Sized on a 4x larger image (as at a larger network input), the 10x10 px
    background FP becomes 40x40: medium."""
    gts, dets = hand_case()
    bigger = [ev.ImageGroundTruth(g.image_id, 4 * H, 4 * W, g.boxes, g.classes, g.difficult)
              for g in gts]
    c = ev.precision_by_scale(bigger, dets, score_thresholds=(0.01,))["thresholds"]["0.01"]
    assert (c["small"]["false_positives"], c["medium"]["false_positives"]) == (0, 2)
    assert c["medium"]["true_positives"] == 1  # the 20x20 object is 80x80 now


def test_calibration_bins_and_ece_hand_case():
    scores = [0.05, 0.15, 0.12, 0.95, 1.0, 0.5]
    correct = [False, True, False, True, True, False]
    bins = calibration.calibration_bins(scores, correct, num_bins=10)
    assert bins["count"] == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]
    assert bins["correct"] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    np.testing.assert_allclose(bins["score_sum"], [0.05, 0.27, 0, 0, 0, 0.5, 0, 0, 0, 1.95])
    # (1|0 - 0.05| + 2|0.5 - 0.135| + 1|0 - 0.5| + 2|1 - 0.975|) / 6 = 1.33 / 6
    assert calibration.expected_calibration_error(bins) == pytest.approx(1.33 / 6)
    merged = calibration.merge_bins([bins, bins])
    assert merged["count"] == [2 * c for c in bins["count"]]
    assert calibration.expected_calibration_error(merged) == pytest.approx(1.33 / 6)
    empty = calibration.calibration_bins([], [], num_bins=4)
    assert empty["count"] == [0] * 4 and calibration.expected_calibration_error(empty) is None
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        calibration.calibration_bins([1.5], [True])


def test_evaluation_reports_calibration_without_ignored_detections():
    gts, dets = hand_case()
    results = ev.evaluate_detections(gts, dets, class_names=["x", "y"])
    bins = results["calibration"]
    # TP 0.9 and 0.2; FP 0.5, 0.4 and 0.05; the 0.95 hit on the difficult object is left out.
    assert bins["count"] == [1, 0, 1, 0, 1, 1, 0, 0, 0, 1]
    assert bins["correct"] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 1]


def test_reliability_diagram_png(tmp_path):
    bins = calibration.calibration_bins([0.05, 0.15, 0.95, 0.5], [False, True, True, False])
    path = calibration.plot_reliability_diagram(bins, str(tmp_path / "scb.png"), "scb, 5 seeds")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["scb.png"]  # no temporary left behind
    calibration.plot_reliability_diagram(calibration.calibration_bins([], []),
                                         str(tmp_path / "empty.png"))
    assert os.path.getsize(tmp_path / "empty.png") > 0


def test_markdown_shows_precision_and_false_positives_per_image():
    gts, dets = hand_case()
    text = ev.markdown_table({"precision_by_scale": ev.precision_by_scale(gts, dets)})
    # score >= 0.01: small 1 TP / 2 FP -> 33.33 %, 1.00 FP per image (2 images).
    assert "| score >= 0.01 | 33.33 (1.00 FP/img) | 0.00 (0.50 FP/img) | 100.00 (0.00 FP/img) |" in text


def test_report_has_precision_on_both_sizings(tmp_path):
    from keras_scb.validation import write_report

    gts, dets = hand_case()
    results = ev.evaluate_detections(gts, dets, class_names=["x", "y"])
    results["recall_by_scale_at_input"] = ev.recall_by_scale(gts, dets)
    results["precision_by_scale_at_input"] = ev.precision_by_scale(gts, dets)
    text = write_report(results, str(tmp_path))
    assert text.count("**Precision by scale**") == 2 and text.count("**Recall by scale**") == 2


def test_calibration_is_none_for_scores_that_are_not_probabilities():
    """Scores outside [0, 1] (a results file of logits) still get the ranking
    metrics; only the calibration, defined for probabilities, is left out."""
    from keras_scb.evaluation import ImageDetections, ImageGroundTruth, evaluate_detections

    gt = [ImageGroundTruth("a", 100, 100, np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([0]))]
    det = [ImageDetections("a", np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([3.5]), np.array([0]))]
    results = evaluate_detections(gt, det, class_names=["x"])
    assert results["calibration"] is None
    assert results["coco"]["AP50"] == pytest.approx(1.0)

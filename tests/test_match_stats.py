import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_scb import match_stats as ms
from keras_scb.anchors import get_anchors

from reference import match, random_boxes

ANCHORS = get_anchors("ssd300")
TIE = 1e-6


def brute_force_counts(boxes, classes):
    """Anchors per box under the float64 loop reference of the SSD matching rule."""
    matched, overlaps = match(boxes, classes, ANCHORS)
    return np.bincount(matched[matched >= 0], minlength=len(boxes)), overlaps


def float_sensitive(overlaps):
    """Whether float32 rounding may legitimately change a count: some IoU within
    `TIE` of the 0.5 threshold, or two boxes within `TIE` of each other for an
    anchor that either takes. (Ties between a box's best anchors only decide
    which anchor it is forced onto, not how many it gets.)"""
    if np.any(np.abs(overlaps - 0.5) < TIE):
        return True
    if len(overlaps) < 2:
        return False
    top = np.sort(overlaps, axis=0)
    return bool(np.any((top[-1] - top[-2] < TIE) & (top[-1] >= 0.5 - TIE)))


def test_counts_match_brute_force_on_random_boxes():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(6):
        boxes, classes = random_boxes(rng)  # includes padding rows (class -1)
        expected, overlaps = brute_force_counts(boxes, classes)
        assert not float_sensitive(overlaps[classes >= 0])
        ours = ms.image_match_counts(boxes, classes, ANCHORS)
        np.testing.assert_array_equal(ours, expected)
        assert np.all(ours[classes < 0] == 0)
        checked += int(np.sum(classes >= 0))
    assert checked > 15


@pytest.fixture(scope="module")
def bccd_train():
    from keras_scb.data import load_bccd

    return load_bccd("train", verify_images=False)


def test_counts_match_brute_force_on_bccd(bccd_train):
    checked = 0
    for record in bccd_train.records[:12]:
        expected, overlaps = brute_force_counts(record.boxes, record.classes)
        if float_sensitive(overlaps):
            continue
        ours = ms.image_match_counts(record.boxes, record.classes, ANCHORS)
        np.testing.assert_array_equal(ours, expected)
        checked += 1
    assert checked >= 8


def test_batched_counts_equal_per_image_counts():
    rng = np.random.default_rng(1)
    images = [random_boxes(rng) for _ in range(4)]
    g = max(len(c) for _, c in images)
    boxes = np.zeros((4, g, 4), np.float32)
    classes = -np.ones((4, g), np.int32)
    for i, (b, c) in enumerate(images):
        boxes[i, : len(c)], classes[i, : len(c)] = b, c
    batched = np.asarray(ms.match_counts_per_box(boxes, classes, ANCHORS))
    for i, (b, c) in enumerate(images):
        np.testing.assert_array_equal(batched[i, : len(c)], brute_force_counts(b, c)[0])
        assert np.all(batched[i, len(c):] == 0)


def test_a_box_can_lose_its_only_anchor():
    # Two copies of a 6x6 px box: no anchor reaches IoU 0.5, both have the same
    # best anchor, and the later copy takes it, leaving the first with none.
    centre = np.array([84.0, 84.0]) / 300  # an anchor centre of the 38x38 map
    box = np.concatenate([centre - 3 / 300, centre + 3 / 300])
    boxes = np.stack([box, box]).astype(np.float32)
    ours = ms.image_match_counts(boxes, [0, 1], ANCHORS)
    expected, _ = brute_force_counts(boxes, [0, 1])
    np.testing.assert_array_equal(ours, [0, 1])
    np.testing.assert_array_equal(expected, [0, 1])


def test_count_summary_and_scales():
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 20, 200)
    scales = rng.integers(0, 3, 200)
    stats = ms.match_statistics(counts, scales)
    for name, mask in [("all", np.ones(200, bool))] + [
        (s, scales == k) for k, s in enumerate(("small", "medium", "large"))
    ]:
        c = counts[mask]
        summary = stats[name]
        assert summary["num_objects"] == len(c)
        assert summary["mean"] == pytest.approx(np.mean(c))
        assert summary["median"] == pytest.approx(np.median(c))
        assert summary["fraction_at_most_1"] == pytest.approx(np.mean(c <= 1))
        assert summary["fraction_zero"] == pytest.approx(np.mean(c == 0))
        values, freq = np.unique(c, return_counts=True)
        assert {v: summary["histogram"][v] for v in values} == dict(zip(values, freq))
        assert sum(summary["histogram"]) == len(c)
    assert ms.count_summary([])["mean"] is None
    assert ms.count_summary([])["scb_weight_per_anchor"] is None


def test_scb_weight_per_anchor_hand_case():
    # M = 1, 2, 4 (and an object with no anchor): M_i W_i = 3 (ln M_i + 1), so the mean
    # over the 7 positive anchors is 3 (1 + (ln 2 + 1) + (ln 4 + 1)) / 7 = 9 (1 + ln 2) / 7.
    summary = ms.count_summary([1, 2, 0, 4])
    assert summary["scb_weight_per_anchor"] == pytest.approx(9 * (1 + np.log(2)) / 7, rel=1e-6)
    assert ms.count_summary([0, 0])["scb_weight_per_anchor"] is None
    assert ms.count_summary([10])["scb_weight_per_anchor"] == pytest.approx(
        3 * (np.log(10) + 1) / 10, rel=1e-6)  # about 0.99: W < 1 from M = 10 on

    # 31x31 px is small, 32x32 medium, 96x96 large (COCO's limits are area < 32^2,
    # < 96^2); the same relative box changes scale with the image size.
    boxes = np.array([[0, 0, 31, 31], [0, 0, 32, 32], [0, 0, 96, 96]]) / 300.0
    np.testing.assert_array_equal(ms.object_scales(boxes, 300, 300), [0, 1, 2])
    np.testing.assert_array_equal(ms.object_scales(boxes, 150, 150), [0, 0, 1])


def test_annotated_counts_skip_difficult_and_measure_both_scales():
    from keras_scb.data.records import Dataset, make_record

    # 640x480 image: a 40x40 px box is medium there but 18.75x25 px (small) at 300x300.
    boxes = np.array([[100, 100, 140, 140], [300, 200, 500, 400], [10, 10, 60, 60]])
    boxes = boxes / [640, 480, 640, 480]
    record = make_record("unused.jpg", 0, "x", 480, 640, boxes, [0, 1, 0],
                         [False, False, True])
    counts, input_scales, original_scales = ms.annotated_counts(
        Dataset([record], ("a", "b")), "ssd300"
    )
    expected, _ = brute_force_counts(boxes[:2].astype(np.float32), [0, 1])
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(input_scales, [0, 2])
    np.testing.assert_array_equal(original_scales, [1, 2])


def test_augmented_counts_follow_the_training_pipeline(bccd_train):
    """Counts of augmented samples equal per-image counts of the same samples."""
    from keras_scb.data import training_pipeline

    dataset = dataclasses.replace(bccd_train, records=bccd_train.records[:3])
    counts, scales = ms.augmented_counts(dataset, "ssd300", 2, seed=5, batch_size=4)
    batches = training_pipeline(
        dataset, "ssd300", batch_size=4, targets="gt", seed=5, shuffle=False,
        repeat=True, drop_remainder=True,
    )
    expected_counts, expected_scales, seen = [], [], 0
    for _, gt in batches:
        for row in gt.numpy():
            if seen == 6:
                break
            real = row[:, 4] >= 0
            # Same TF matching per image: this checks the batching, padding and
            # sample order (augmented boxes often tie, see `float_sensitive`).
            expected_counts.append(
                ms.image_match_counts(row[real, :4], row[real, 4].astype(int), ANCHORS)
            )
            expected_scales.append(ms.object_scales(row[real, :4], 300, 300))
            seen += 1
        if seen == 6:
            break
    np.testing.assert_array_equal(counts, np.concatenate(expected_counts))
    np.testing.assert_array_equal(scales, np.concatenate(expected_scales))


def test_cli_on_bccd(tmp_path, bccd_train):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "keras_scb.match_stats", "--dataset=bccd",
         "--train_split=train", "--max_images=3", "--augment_samples=1",
         f"--output_dir={tmp_path}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean M_i" in result.stdout
    with open(tmp_path / "match_stats.json") as f:
        report = json.load(f)
    assert report["num_images"] == 3 and report["anchors"] == "ssd300"
    assert set(report["stages"]) == {"annotated", "augmented"}

    records = bccd_train.records[:3]
    expected = np.concatenate([
        brute_force_counts(r.boxes[~r.difficult], r.classes[~r.difficult])[0]
        for r in records
    ])
    annotated = report["stages"]["annotated"]
    assert annotated["all"]["num_objects"] == len(expected)
    assert annotated["all"]["mean"] == pytest.approx(expected.mean())
    scale_total = sum(annotated[s]["num_objects"] for s in ("small", "medium", "large"))
    assert scale_total == len(expected)
    assert annotated["by_original_image_scale"]["all"]["num_objects"] == len(expected)
    for name in ("matched_anchors_hist.png", "matched_anchors_by_scale.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

"""Official metrics: our COCO numbers equal pycocotools on the original annotation
file (annotation areas, crowd boxes, original ids), COCO results files, and the
exact 32^2 / 96^2 size limits."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_scb import evaluation as ev
from keras_scb.data import records as records_lib
from keras_scb.data import vendored
from keras_scb.matching import box_areas

SPLIT = "val2017"
# Equal up to float64 round-off of the relative <-> pixel box conversions.
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def subset():
    return vendored.load_coco_subset(SPLIT, verify_images=False)


@pytest.fixture(scope="module")
def subset_ground_truths(subset):
    from keras_scb.validation import source_ground_truths

    return source_ground_truths(subset)


def _annotation_file():
    return os.path.join(vendored.coco_subset_root(), "annotations", f"instances_{SPLIT}.json")


def _pycocotools_stats(results_path, image_ids=None):
    """pycocotools' 12 stats of a results file on the ORIGINAL annotation file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(_annotation_file())
        coco_dt = coco_gt.loadRes(results_path)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(ev.COCO_METRICS, evaluator.stats.tolist()))


def _assert_equal_stats(ours, reference):
    for name in ev.COCO_METRICS:
        expected = None if reference[name] < 0 else reference[name]
        if expected is None:
            assert ours[name] is None, name
        else:
            assert ours[name] == pytest.approx(expected, abs=TOLERANCE), name


def _jittered_detections(ground_truths, num_classes, seed):
    """Every object (crowds too) found with jittered corners, plus false positives;
    scores on a coarse grid so that ties across images test pycocotools' order."""
    rng = np.random.default_rng(seed)
    detections = []
    for gt in ground_truths:
        n = len(gt.boxes)
        sides = np.concatenate([gt.boxes[:, 2:] - gt.boxes[:, :2]] * 2, axis=1)
        found = gt.boxes + rng.normal(0.0, 0.08, (n, 4)) * sides
        found_classes = np.where(rng.random(n) < 0.9, gt.classes, rng.integers(0, num_classes, n))
        corners = rng.random((5, 2, 2))
        false = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        boxes = np.clip(np.concatenate([found, false]), 0.0, 1.0)
        classes = np.concatenate([found_classes, rng.integers(0, num_classes, 5)])
        scores = np.round(rng.random(len(boxes)), 1)
        detections.append(ev.ImageDetections(gt.image_id, boxes, scores, classes))
    return detections


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_metrics_equal_pycocotools_on_the_original_file(
    subset, subset_ground_truths, tmp_path, seed
):
    ground_truths = subset_ground_truths
    assert any(gt.difficult.any() for gt in ground_truths)  # the subset has crowd boxes
    num_classes = len(subset.class_names)
    detections = _jittered_detections(ground_truths, num_classes, seed)
    path = str(tmp_path / "detections.json")
    ev.write_coco_results(
        ev.coco_results(ground_truths, detections, subset.category_ids, num_classes), path
    )
    reference = _pycocotools_stats(path)
    ours = ev.coco_metrics(ground_truths, detections, num_classes, subset.category_ids)
    _assert_equal_stats(ours, reference)
    # Box areas instead of the annotation areas move the S/M/L numbers: what the
    # test guards against.
    box_area_truths = [dataclasses.replace(gt, areas=None) for gt in ground_truths]
    by_box = ev.coco_metrics(box_area_truths, detections, num_classes, subset.category_ids)
    assert any(
        abs(by_box[name] - reference[name]) > 1e-3 for name in ("AP_S", "AP_M", "AR_S", "AR_M")
    )


def test_cli_scores_a_results_file_without_a_model(subset, subset_ground_truths, tmp_path):
    """``python -m keras_scb.evaluate --score_results_json`` on the COCO split."""
    detections = _jittered_detections(subset_ground_truths, len(subset.class_names), 2)
    path = str(tmp_path / "detections.json")
    ev.write_coco_results(
        ev.coco_results(subset_ground_truths, detections, subset.category_ids), path
    )
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-m", "keras_scb.evaluate", "--score_results_json", path,
         "--dataset", "coco", "--data_dir", vendored.coco_subset_root(),
         "--val_split", SPLIT, "--output_dir", str(tmp_path / "eval")],
        cwd=repository, check=True, capture_output=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    with open(tmp_path / "eval" / "metrics.json") as f:
        results = json.load(f)
    _assert_equal_stats(results["coco"], _pycocotools_stats(path))


def test_results_file_uses_original_ids_and_pixels(subset, subset_ground_truths):
    """Detections equal to the ground truth come back as the original annotations."""
    detections = [
        ev.ImageDetections(gt.image_id, gt.boxes, np.ones(len(gt.boxes)), gt.classes)
        for gt in subset_ground_truths
    ]
    results = ev.coco_results(subset_ground_truths, detections, subset.category_ids)
    with open(_annotation_file()) as f:
        original = json.load(f)["annotations"]

    def key(row):
        return (row["image_id"], row["category_id"], tuple(np.round(row["bbox"], 2)))

    assert sorted(map(key, results)) == sorted(map(key, original))
    back = ev.detections_from_coco_results(
        results, subset_ground_truths, subset.category_ids, len(subset.class_names)
    )
    for det, gt in zip(back, subset_ground_truths):
        np.testing.assert_allclose(det.boxes, gt.boxes, atol=1e-12)
        np.testing.assert_array_equal(det.classes, gt.classes)
    with pytest.raises(ValueError, match="category_id 0 is not in the dataset"):
        ev.detections_from_coco_results(
            [{**results[0], "category_id": 0}], subset_ground_truths, subset.category_ids,
            len(subset.class_names),
        )


def test_evaluate_detector_writes_the_results_file(subset, tmp_path):
    """`--results_json` path with a real (untrained) network's detections."""
    import keras

    from keras_scb.validation import evaluate_detector
    from keras_scb.models import build_detector

    keras.utils.set_random_seed(0)
    detector = build_detector(
        "mobilenetv2-ssdlite300", len(subset.class_names), width_multiplier=0.35, backbone_weights=None
    )
    few = dataclasses.replace(subset, records=subset.records[:4])
    path = str(tmp_path / "out" / "detections.json")
    results = evaluate_detector(detector, few, batch_size=4, results_json=path)
    written = ev.read_coco_results(path)
    assert written and {r["image_id"] for r in written} <= {r.image_id for r in few.records}
    assert {r["category_id"] for r in written} <= set(subset.category_ids)
    reference = _pycocotools_stats(path, image_ids=[r.image_id for r in few.records])
    _assert_equal_stats(results["coco"], reference)


def test_annotation_area_not_box_area_bins_coco_objects(tmp_path):
    """A 40x40 box whose segmentation covers 1000 px is small; pycocotools counts an
    area of exactly 32^2 as small AND medium, the paper's recall as medium."""
    from keras_scb.data import coco

    annotations = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 333, "width": 517}],
        "categories": [{"id": 5, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10.5, 20.25, 40, 40],
             "area": 1000.0, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [100, 100, 200, 100],
             "area": 1024.0, "iscrowd": 0},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    dataset = coco.read_coco(str(path), str(tmp_path), verify_images=False)
    record = dataset.records[0]
    np.testing.assert_array_equal(record.areas, [1000.0, 1024.0])
    gt = ev.ImageGroundTruth(
        record.image_id, record.height, record.width, record.boxes, record.classes,
        record.difficult, record.areas,
    )
    recall = ev.recall_by_scale([gt], [], score_thresholds=[0.5])["thresholds"]["0.5"]
    assert [recall[s]["total"] for s in ev.SCALES] == [1, 1, 0]
    perfect = ev.ImageDetections(7, record.boxes[1:], [0.9], [0])
    metrics = ev.coco_metrics([gt], [perfect], 1, dataset.category_ids)
    assert metrics["AP_M"] == pytest.approx(1.0)
    # Small: the 1000-px object is missed (AP 0) and the 1024-px one found; the
    # detection is no false positive there as it lies on an in-range object.
    assert metrics["AR_S"] == pytest.approx(0.5)


# Image sizes (height, width) where relative float32 corners times the size land
# either side of the pixel limits.
ODD_SIZES = [(333, 517), (517, 333), (1000, 999), (97, 4000), (4000, 97), (33, 33), (2999, 3001)]


def _objects_of_size(height, width, sides):
    """VOC-style integer pixel boxes ``[x1-1, y1-1, x2, y2]`` of the given (w, h),
    at several offsets, as the readers make them (relative float32)."""
    boxes, areas = [], []
    for w, h in sides:
        for x0, y0 in ((0, 0), (width - w, height - h), ((width - w) // 3, (height - h) // 7)):
            if 0 <= x0 and 0 <= y0:
                boxes.append([x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height])
                areas.append(w * h)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(areas, np.float64)


@pytest.mark.parametrize("height, width", ODD_SIZES)
def test_size_bins_are_exact_at_the_limits(height, width):
    sides = [(32, 32), (31, 33), (96, 96), (95, 97), (1, 1024), (9216, 1), (16, 64)]
    boxes, areas = _objects_of_size(height, width, [s for s in sides if s[0] <= width and s[1] <= height])
    record = records_lib.make_record("x.jpg", 0, "x", height, width, boxes, np.zeros(len(boxes)),
                                     np.zeros(len(boxes), bool))
    np.testing.assert_array_equal(record.areas, areas)
    expected = np.searchsorted([1024, 9216], areas, side="right")  # exact integers
    gt = ev.ImageGroundTruth(0, height, width, record.boxes, record.classes)
    np.testing.assert_array_equal(ev.scale_of_area(gt.areas), expected)
    recall = ev.recall_by_scale([gt], [], score_thresholds=[0.5])["thresholds"]["0.5"]
    assert [recall[s]["total"] for s in ev.SCALES] == np.bincount(expected, minlength=3).tolist()


def test_plain_float_areas_would_misbin():
    """The exact bins above are needed: the plain product misses 32^2 on some sizes."""
    misses = 0
    for height, width in ODD_SIZES:
        boxes, areas = _objects_of_size(height, width, [(32, 32)])
        pixels = boxes.astype(np.float64) * [width, height, width, height]
        misses += np.count_nonzero(box_areas(pixels) != areas)
    assert misses > 0


def test_voc07_and_recall_share_the_strict_iou_rule():
    """IoU exactly 0.5 is a miss in both (py-faster-rcnn's ``ovmax > ovthresh``)."""
    gt = ev.ImageGroundTruth(0, 128, 128, [[0, 0, 40 / 128, 20 / 128]], [0])
    half = ev.ImageDetections(0, [[0, 0, 20 / 128, 20 / 128]], [0.9], [0])  # IoU 0.5
    more = ev.ImageDetections(0, [[0, 0, 21 / 128, 20 / 128]], [0.9], [0])  # IoU 0.525
    for det, hit in ((half, 0), (more, 1)):
        voc = ev.voc07_metrics([gt], [det], 1)
        recall = ev.recall_by_scale([gt], [det], score_thresholds=[0.5])
        assert voc["mAP"] == pytest.approx(float(hit))
        assert recall["thresholds"]["0.5"]["all"]["recalled"] == hit


def test_tfrecord_keeps_annotation_areas(subset, tmp_path):
    from keras_scb.data.pipeline import validation_pipeline
    from keras_scb.data.tfrecord import write_tfrecords

    few = dataclasses.replace(subset, records=subset.records[:3])
    meta = write_tfrecords(few, str(tmp_path / "val"))
    _, info = next(iter(validation_pipeline(meta, batch_size=3, image_size=8)))
    for b, record in enumerate(few.records):
        areas = info["areas"].numpy()[b][: len(record.areas)]
        np.testing.assert_array_equal(areas, record.areas)  # float64, not float32

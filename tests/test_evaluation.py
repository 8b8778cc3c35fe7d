import contextlib
import io

import numpy as np
import pytest

from keras_scb import evaluation as ev


def _rel(pixel_boxes, height, width):
    return np.asarray(pixel_boxes, float).reshape(-1, 4) / [width, height, width, height]


def _gt(image_id, pixel_boxes, classes, height=100, width=200, difficult=None):
    return ev.ImageGroundTruth(
        image_id, height, width, _rel(pixel_boxes, height, width), classes, difficult
    )


def _det(image_id, pixel_boxes, scores, classes, height=100, width=200):
    return ev.ImageDetections(
        image_id, _rel(pixel_boxes, height, width), scores, classes
    )


# One small (20x20), one medium (50x50) and one large (100x100 px) object.
SIZED_BOXES = [[10, 10, 30, 30], [40, 20, 90, 70], [95, 0, 195, 100]]


def _random_case(rng, num_images=6, num_classes=3):
    gts, dets = [], []
    for i in range(num_images):
        h, w = int(rng.integers(80, 400)), int(rng.integers(80, 400))
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 0.7, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0.03, 0.3, (n, 2))], 1)
        classes = rng.integers(0, num_classes, n)
        gts.append(ev.ImageGroundTruth(
            f"img{i}", h, w, boxes, classes, rng.uniform(size=n) < 0.2
        ))
        # Jittered copies of the objects (some with the wrong class) plus clutter.
        jitter = boxes + rng.normal(0, 0.02, boxes.shape)
        det_classes = np.where(rng.uniform(size=n) < 0.2, (classes + 1) % num_classes, classes)
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 0.7, (k, 2))
        clutter = np.concatenate([xy, xy + rng.uniform(0.03, 0.3, (k, 2))], 1)
        dets.append(ev.ImageDetections(
            f"img{i}",
            np.concatenate([jitter, clutter]),
            rng.uniform(0, 1, n + k).round(2),  # rounding makes score ties
            np.concatenate([det_classes, rng.integers(0, num_classes, k)]),
        ))
    return gts, dets


def _iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- COCO ------------------------------------------------------------------------


def test_coco_perfect_detections_score_one():
    gts = [_gt(0, SIZED_BOXES, [0, 1, 0])]
    dets = [_det(0, SIZED_BOXES, [0.9, 0.8, 0.7], [0, 1, 0])]
    metrics = ev.coco_metrics(gts, dets)
    assert set(metrics) == set(ev.COCO_METRICS)
    for name in ev.COCO_METRICS:
        if name != "AR1":  # two class-0 objects in one image: AR1 finds one
            assert metrics[name] == pytest.approx(1.0), name
    # AR1 per class: class 0 recalls 1 of 2, class 1 recalls 1 of 1.
    assert metrics["AR1"] == pytest.approx((0.5 + 1.0) / 2)


def test_coco_one_missed_object():
    # Four class-0 objects, three found exactly: recall 3/4; precision is 1 up to
    # recall 0.75, so 101-point AP = 76/101 (recall points 0.00 .. 0.75).
    boxes = SIZED_BOXES + [[150, 10, 190, 60]]
    gts = [_gt("a", boxes, [0, 0, 0, 0])]
    dets = [_det("a", boxes[:3], [0.9, 0.8, 0.7], [0, 0, 0])]
    metrics = ev.coco_metrics(gts, dets)
    assert metrics["AR100"] == pytest.approx(0.75)
    assert metrics["AR10"] == pytest.approx(0.75)
    assert metrics["AP"] == pytest.approx(76 / 101)
    assert metrics["AP50"] == pytest.approx(76 / 101)
    # The missed 40x50 object is medium, as is the found 50x50 one.
    assert metrics["AR_M"] == pytest.approx(0.5)
    assert metrics["AR_S"] == pytest.approx(1.0)


def test_coco_difficult_objects_neither_count_nor_penalise():
    boxes = SIZED_BOXES + [[150, 70, 190, 95]]
    gts = [_gt(0, boxes, [0, 0, 0, 0], difficult=[False, False, False, True])]
    hit_difficult = [_det(0, boxes, [0.9, 0.8, 0.7, 0.95], [0, 0, 0, 0])]
    skip_difficult = [_det(0, boxes[:3], [0.9, 0.8, 0.7], [0, 0, 0])]
    for dets in (hit_difficult, skip_difficult):
        metrics = ev.coco_metrics(gts, dets)
        assert metrics["AP"] == pytest.approx(1.0)
        assert metrics["AR100"] == pytest.approx(1.0)


def test_coco_no_ground_truth_in_a_range_is_none():
    gts = [_gt(0, SIZED_BOXES[1:], [0, 0])]  # no small object
    dets = [_det(0, SIZED_BOXES[1:], [0.9, 0.8], [0, 0])]
    metrics = ev.coco_metrics(gts, dets)
    assert metrics["AP_S"] is None and metrics["AR_S"] is None
    assert metrics["AP"] == pytest.approx(1.0)


def test_coco_matches_pycocotools_on_standard_json():
    """Our in-memory conversion vs pycocotools fed the usual way (loadRes)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts, dets = _random_case(np.random.default_rng(0), num_images=8)
    category_ids = [7, 3, 11]
    ours = ev.coco_metrics(gts, dets, num_classes=3, category_ids=category_ids)

    images, annotations, results = [], [], []
    for i, (gt, det) in enumerate(zip(gts, dets)):
        images.append({"id": 100 + i, "height": gt.height, "width": gt.width})
        scale = np.array([gt.width, gt.height] * 2)
        for box, c, d in zip(gt.boxes * scale, gt.classes, gt.difficult):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({
                "id": len(annotations) + 1, "image_id": 100 + i, "iscrowd": int(d),
                "category_id": category_ids[c], "bbox": [box[0], box[1], w, h],
                "area": w * h,
            })
        for box, c, s in zip(det.boxes * scale, det.classes, det.scores):
            results.append({
                "image_id": 100 + i, "category_id": category_ids[c], "score": s,
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            })
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images, "annotations": annotations,
            "categories": [{"id": c} for c in category_ids],
        }
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert 0.0 < ours["AP50"] < 1.0  # a non-trivial case
    for name, value in zip(ev.COCO_METRICS, evaluator.stats):
        expected = None if value < 0 else pytest.approx(value, abs=1e-9)
        assert ours[name] == expected, name


# --- VOC07 -----------------------------------------------------------------------


def test_voc07_hand_made_case():
    gts = [
        _gt(0, [[0, 0, 50, 50], [100, 0, 150, 50]], [0, 0], difficult=[False, True]),
        _gt(1, [[10, 10, 60, 60], [0, 50, 40, 90]], [0, 1]),
        _gt(2, [[0, 0, 30, 30]], [2], difficult=[True]),  # class 2: only difficult
    ]
    dets = [
        _det(0, [[0, 0, 50, 50], [1, 1, 50, 50], [100, 0, 150, 50]],
             [0.9, 0.8, 0.7], [0, 0, 0]),  # hit, duplicate (FP), on difficult (ignored)
        _det(1, [[10, 10, 60, 60], [0, 50, 40, 90]], [0.6, 0.5], [0, 2]),
    ]
    # Class 0 after dropping the ignored detection: TP, FP, TP with 2 positives ->
    # recall .5 .5 1, precision 1 .5 2/3 -> 11-point AP = (6 * 1 + 5 * 2/3) / 11.
    # Class 1: no detection -> 0. Class 2: no countable object -> None.
    result = ev.voc07_metrics(gts, dets, class_names=["a", "b", "c"])
    ap0 = (6 + 5 * 2 / 3) / 11
    assert result["per_class"]["a"] == pytest.approx(ap0)
    assert result["per_class"]["b"] == 0.0
    assert result["per_class"]["c"] is None
    assert result["mAP"] == pytest.approx(ap0 / 2)


def test_voc07_iou_must_exceed_threshold():
    # Detection [0, 0, 100, 50] on object [0, 0, 50, 50]: IoU exactly 0.5.
    gts = [_gt(0, [[0, 0, 50, 50]], [0])]
    dets = [_det(0, [[0, 0, 100, 50]], [0.9], [0])]
    assert ev.voc07_metrics(gts, dets)["mAP"] == 0.0
    assert ev.voc07_metrics(gts, dets, iou_threshold=0.49)["mAP"] == pytest.approx(1.0)


def _devkit_voc07(gts, dets, num_classes, iou_threshold=0.5):
    """Straight transcription of the VOC devkit's voc_eval: one pass over all of a
    class's detections sorted by score, marking objects as found."""
    by_image = {gt.image_id: gt for gt in gts}
    aps = []
    for k in range(num_classes):
        found = {g.image_id: np.zeros(len(g.boxes), bool) for g in gts}
        npos = sum(int(np.sum((g.classes == k) & ~g.difficult)) for g in gts)
        records = [
            (s, d.image_id, b)
            for d in dets for b, s, c in zip(d.boxes, d.scores, d.classes) if c == k
        ]
        order = sorted(range(len(records)), key=lambda r: -records[r][0])
        tp, fp = [], []
        for r in order:
            score, image_id, box = records[r]
            g = by_image[image_id]
            scale = np.array([g.width, g.height] * 2)
            best, best_j = -1.0, -1
            for j in range(len(g.boxes)):
                overlap = _iou(box * scale, g.boxes[j] * scale)
                if g.classes[j] == k and overlap > best:
                    best, best_j = overlap, j
            if best > iou_threshold:
                if g.difficult[best_j]:
                    continue
                if not found[image_id][best_j]:
                    found[image_id][best_j] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / npos, tp / np.maximum(tp + fp, 1e-12)
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ap += (np.max(prec[rec >= t]) if np.sum(rec >= t) > 0 else 0.0) / 11.0
        aps.append(ap)
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_voc07_matches_devkit_transcription(seed):
    gts, dets = _random_case(np.random.default_rng(seed), num_images=10)
    expected = _devkit_voc07(gts, dets, 3)
    assert 0.0 < expected < 1.0
    assert ev.voc07_metrics(gts, dets, num_classes=3)["mAP"] == pytest.approx(expected)


# --- Recall by scale -------------------------------------------------------------


def _recall_case():
    # Image 100 x 200 px. Objects: small 20x20, medium 50x50, large 100x100, and a
    # difficult small one (excluded from every count).
    gts = [_gt(0, SIZED_BOXES + [[150, 70, 170, 90]], [0, 1, 0, 0],
               difficult=[False, False, False, True])]
    dets = [_det(0, [
        [10, 10, 30, 30],    # small, exact, score 0.05
        [40, 20, 90, 70],    # medium, exact but WRONG class (0 instead of 1), 0.9
        [40, 20, 90, 46],    # medium, right class, IoU 0.52, score 0.3
        [95, 0, 195, 100],   # large, exact, 0.2
        [150, 70, 170, 90],  # the difficult object, 0.99
    ], [0.05, 0.9, 0.3, 0.2, 0.99], [0, 0, 1, 0, 0])]
    return gts, dets


def _counts(result, t):
    return {s: (c["recalled"], c["total"]) for s, c in result["thresholds"][t].items()}


def test_recall_by_scale_constructed_example():
    gts, dets = _recall_case()
    result = ev.recall_by_scale(gts, dets)
    assert result["class_aware"] is True
    assert _counts(result, "0.01") == {
        "small": (1, 1), "medium": (1, 1), "large": (1, 1), "all": (3, 3)}
    assert _counts(result, "0.1") == {
        "small": (0, 1), "medium": (1, 1), "large": (1, 1), "all": (2, 3)}
    # score >= t includes t itself (the 0.3 medium hit).
    assert _counts(result, "0.3") == {
        "small": (0, 1), "medium": (1, 1), "large": (0, 1), "all": (1, 3)}


def test_recall_by_scale_class_agnostic_and_iou_threshold():
    gts, dets = _recall_case()
    agnostic = ev.recall_by_scale(gts, dets, score_thresholds=[0.5], class_aware=False)
    assert _counts(agnostic, "0.5")["medium"] == (1, 1)  # the 0.9 wrong-class box
    aware = ev.recall_by_scale(gts, dets, score_thresholds=[0.5])
    assert _counts(aware, "0.5")["medium"] == (0, 1)
    strict = ev.recall_by_scale(gts, dets, score_thresholds=[0.25], iou_threshold=0.53)
    assert _counts(strict, "0.25")["medium"] == (0, 1)


def test_recall_scale_uses_original_image_size():
    # The same relative box is small in a 100x100 image (20x20 px) and medium in a
    # 400x400 one (80x80 px).
    box = [[0.1, 0.1, 0.3, 0.3]]
    gts = [ev.ImageGroundTruth(0, 100, 100, box, [0]),
           ev.ImageGroundTruth(1, 400, 400, box, [0])]
    dets = [ev.ImageDetections(1, box, [0.5], [0])]
    counts = _counts(ev.recall_by_scale(gts, dets), "0.01")
    assert counts["small"] == (0, 1) and counts["medium"] == (1, 1)


def test_recall_by_scale_matches_brute_force():
    gts, dets = _random_case(np.random.default_rng(4), num_images=12)
    thresholds = [0.01, 0.1, 0.3]
    result = ev.recall_by_scale(gts, dets, thresholds)
    for t in thresholds:
        expected = {s: [0, 0] for s in ev.SCALES + ("all",)}
        for gt, det in zip(gts, dets):
            for box, c, hard in zip(gt.boxes, gt.classes, gt.difficult):
                if hard:
                    continue
                area = (box[2] - box[0]) * gt.width * (box[3] - box[1]) * gt.height
                scale = "small" if area < 32**2 else "medium" if area < 96**2 else "large"
                hit = any(
                    s >= t and dc == c
                    and _iou(db, box) >= 0.5
                    for db, s, dc in zip(det.boxes, det.scores, det.classes)
                )
                for key in (scale, "all"):
                    expected[key][0] += hit
                    expected[key][1] += 1
        assert _counts(result, str(t)) == {k: tuple(v) for k, v in expected.items()}


def test_unknown_detection_image_is_an_error():
    with pytest.raises(ValueError, match="unknown image_id"):
        ev.recall_by_scale([_gt(0, [], [])], [_det(1, [], [], [])])


# --- Reporting -------------------------------------------------------------------


def _results(ap, recalled):
    return {
        "coco": {name: ap for name in ev.COCO_METRICS},
        "voc07": {"mAP": ap, "per_class": {"RBC": ap, "WBC": None}},
        "recall_by_scale": {
            "iou_threshold": 0.5, "class_aware": True,
            "thresholds": {"0.01": {"small": {"recalled": recalled, "total": 516}}},
        },
    }


def test_markdown_table_formats_percent_and_counts():
    text = ev.markdown_table(_results(0.25, 377))
    assert "| AP | AP50 |" in text
    assert "| 25.00 | 25.00 |" in text
    assert "| mAP | RBC | WBC |" in text and "| 25.00 | 25.00 | - |" in text
    assert "| score >= 0.01 | 73.06 (377/516) |" in text


def test_evaluate_write_compare_round_trip(tmp_path):
    gts, dets = _recall_case()
    results = ev.evaluate_detections(gts, dets, class_names=["x", "y"])
    assert set(results) == {"coco", "voc07", "recall_by_scale", "precision_by_scale", "calibration"}
    path = tmp_path / "run" / "metrics.json"
    ev.write_json(results, str(path))
    assert ev.load_results(str(tmp_path / "run")) == results
    assert ev.load_results(str(path)) == results

    text = ev.compare(_results(0.25, 377), _results(0.30, 400), names=("ssd", "scb"))
    lines = text.splitlines()
    assert lines[0] == "| metric | ssd | scb | scb - ssd |"
    assert "| COCO AP | 25.00 | 30.00 | +5.00 |" in lines
    assert "| VOC07 AP WBC | - | - | - |" in lines
    # 400/516 = 77.52%, 377/516 = 73.06%: delta 4.46 points.
    assert "| Recall@0.01 small | 73.06 (377/516) | 77.52 (400/516) | +4.46 |" in lines
    # A metric present in only one run.
    b = _results(0.30, 400)
    del b["coco"]["AR_L"]
    assert "| COCO AR_L | 25.00 | - | - |" in ev.compare(_results(0.25, 377), b)


def test_detections_from_decoder_keeps_boxes_and_drops_padding():
    boxes = np.zeros((2, 3, 4))
    boxes[0, 0] = [0.2, 0.1, 0.4, 0.3]  # xmin, ymin, xmax, ymax
    boxes[1, :2] = [[0.6, 0.5, 0.8, 0.7], [0.1, 0.0, 0.3, 0.2]]
    scores = np.array([[0.9, 0, 0], [0.8, 0.7, 0]])
    classes = np.array([[2, 0, 0], [1, 0, 0]])
    dets = ev.detections_from_decoder(["a", "b"], boxes, scores, classes, [1, 2])
    assert [d.image_id for d in dets] == ["a", "b"]
    np.testing.assert_array_equal(dets[0].boxes, [[0.2, 0.1, 0.4, 0.3]])
    np.testing.assert_array_equal(dets[1].boxes, [[0.6, 0.5, 0.8, 0.7], [0.1, 0.0, 0.3, 0.2]])
    np.testing.assert_array_equal(dets[1].scores, [0.8, 0.7])
    np.testing.assert_array_equal(dets[1].classes, [1, 0])


def test_summary_scalars_name_every_class_and_keep_undefined_as_nan():
    from keras_scb.validation import summary_scalars

    gts = [_gt("a", SIZED_BOXES[:2], [0, 1])]
    dets = [_det("a", SIZED_BOXES[:1], [0.9], [0])]
    results = {
        "coco": ev.coco_metrics(gts, dets, num_classes=3),
        "voc07": ev.voc07_metrics(
            gts, dets, num_classes=3, class_names=["red cell", "WBC", "Platelets"]
        ),
    }
    scalars = summary_scalars(results)
    assert scalars["voc07_AP_red_cell"] == pytest.approx(1.0)
    assert scalars["voc07_AP_WBC"] == 0.0
    assert np.isnan(scalars["voc07_AP_Platelets"])  # no object of that class
    assert scalars["voc07_mAP"] == pytest.approx(0.5)

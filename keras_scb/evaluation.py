"""Detection metrics: COCO (through pycocotools), VOC07 11-point mAP and the
paper's recall by object scale; plus JSON / Markdown reporting and run comparison.

Pure numpy + pycocotools: nothing here needs a model or TensorFlow.

Inputs, one record per image:

- `ImageGroundTruth`: boxes are relative ``[xmin, ymin, xmax, ymax]`` (the data
  convention) and are scaled to pixels with the ORIGINAL image ``height`` and
  ``width``, so COCO's area ranges and the scale buckets refer to the image as
  annotated, not to the network input. ``areas`` are the objects' pixel areas
  there: COCO's annotation ``area`` (the segmentation's) where the source has
  one, else the box's (see `pixel_box_areas`, exact for annotated corners).
- `ImageDetections`: boxes are relative ``[xmin, ymin, xmax, ymax]`` too (what
  `keras_scb.postprocess.PostProcessor` gives). Scores are
  assumed to be final: per-class NMS (IoU 0.45) and the top-200 cut are the
  decoder's job and are not redone here.

Difficult (VOC) or ignored objects neither count as objects to find nor penalise
the detections that hit them, in every metric.

Size bins, on ``areas``:

- The paper's recall by scale (`recall_by_scale`, `scale_of_area`): small
  ``area < 32^2``, medium ``32^2 <= area < 96^2``, large ``area >= 96^2``; an
  object of exactly 32x32 pixels is medium and one of 96x96 is large.
- COCO AP_S/M/L, AR_S/M/L (`coco_metrics`) are pycocotools' own: its ranges
  ``[0, 32^2]``, ``[32^2, 96^2]``, ``[96^2, 1e10]`` are closed (an object is
  ignored if ``area < lo or area > hi``), so an area of exactly 32^2 counts as
  both small and medium there, and 96^2 as both medium and large. With the
  annotation areas and original ids, `coco_metrics` equals pycocotools run on the
  original annotation file with the `coco_results` of the same detections.

A detection hits an object when their IoU is strictly greater than the
threshold, in VOC07 and in recall by scale alike (`_hits`: py-faster-rcnn's
``voc_eval``, ``ovmax > ovthresh``); COCO AP keeps pycocotools' ``>=``.
"""

import contextlib
import dataclasses
import io
import json
import os
from typing import Dict, Hashable, List, Optional, Sequence, Union

import numpy as np

from keras_scb.calibration import calibration_bins
from keras_scb.fileio import read_json, write_json
from keras_scb.matching import (
    annotated_pixel_boxes,
    pairwise_iou,
    pixel_box_areas,
    pixel_boxes,
)

# COCO's object scale limits, on box area in pixels of the original image.
SMALL_AREA = 32.0**2
MEDIUM_AREA = 96.0**2
SCALES = ("small", "medium", "large")

# The columns of the paper's Table 5, in pycocotools' `stats` order.
COCO_METRICS = (
    "AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L",
    "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L",
)

DEFAULT_SCORE_THRESHOLDS = (0.01, 0.1, 0.3)

# A detection is a true positive at IoU >= this with an unclaimed ground-truth box
# (VOC07's and COCO's AP50 criterion).
TRUE_POSITIVE_IOU = 0.5


@dataclasses.dataclass
class ImageGroundTruth:
    """Annotated objects of one image.

    Attributes:
        image_id: any hashable, unique over the evaluated set.
        height, width: original image size in pixels.
        boxes: float ``(N, 4)`` relative ``[xmin, ymin, xmax, ymax]``.
        classes: int ``(N,)`` contiguous ids ``0..C-1``.
        difficult: bool ``(N,)`` VOC difficult / ignore flags (default all False).
        areas: float ``(N,)`` object areas in original-image pixels, for the size
            bins (default: `pixel_box_areas` of the boxes).
    """

    image_id: Hashable
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    difficult: Optional[np.ndarray] = None
    areas: Optional[np.ndarray] = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.classes = np.asarray(self.classes, np.int64).reshape(-1)
        n = len(self.boxes)
        if self.difficult is None:
            self.difficult = np.zeros(n, bool)
        self.difficult = np.asarray(self.difficult, bool).reshape(-1)
        if self.areas is None:
            self.areas = pixel_box_areas(self.boxes, self.height, self.width)
        self.areas = np.asarray(self.areas, np.float64).reshape(-1)
        if len(self.classes) != n or len(self.difficult) != n or len(self.areas) != n:
            raise ValueError(
                f"Image {self.image_id!r}: {n} boxes but {len(self.classes)} classes, "
                f"{len(self.difficult)} difficult flags and {len(self.areas)} areas."
            )


@dataclasses.dataclass
class ImageDetections:
    """Final detections of one image.

    Attributes:
        image_id: the `ImageGroundTruth.image_id` they belong to.
        boxes: float ``(K, 4)`` relative ``[xmin, ymin, xmax, ymax]``.
        scores: float ``(K,)``.
        classes: int ``(K,)`` contiguous ids ``0..C-1`` (no background).
    """

    image_id: Hashable
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.classes = np.asarray(self.classes, np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.classes):
            raise ValueError(
                f"Image {self.image_id!r}: {len(self.boxes)} boxes, "
                f"{len(self.scores)} scores, {len(self.classes)} classes."
            )


def detections_from_decoder(image_ids, boxes, scores, classes, num_detections):
    """`ImageDetections` from a batch of `keras_scb.postprocess` outputs.

    Args:
        image_ids: ``B`` ids, in batch order.
        boxes: ``(B, K, 4)`` relative ``[xmin, ymin, xmax, ymax]``.
        scores: ``(B, K)``.
        classes: ``(B, K)`` ids ``0..C-1``.
        num_detections: ``(B,)``; rows past it are padding and dropped.

    Returns:
        A list of ``B`` `ImageDetections`.
    """
    boxes = np.asarray(boxes)
    scores, classes = np.asarray(scores), np.asarray(classes)
    return [
        ImageDetections(image_id, boxes[b, :n], scores[b, :n], classes[b, :n])
        for b, (image_id, n) in enumerate(zip(image_ids, np.asarray(num_detections)))
    ]


def scale_of_area(areas: np.ndarray) -> np.ndarray:
    """Pixel areas ``(N,)`` -> ``(N,)`` indices into `SCALES`: the paper's rule,
    ``32**2`` itself medium and ``96**2`` large (pycocotools counts each limit in
    both neighbouring ranges; see the module docstring)."""
    return np.searchsorted([SMALL_AREA, MEDIUM_AREA], np.asarray(areas), side="right")


def _hits(overlaps, iou_threshold):
    """Whether each IoU counts as a hit: strictly above the threshold, as
    py-faster-rcnn's ``voc_eval`` (``ovmax > ovthresh``); one rule for VOC07 and
    recall by scale. Written as ``>`` so that a NaN IoU is never a hit."""
    return overlaps > iou_threshold


def _pair_up(ground_truths, detections):
    """Yields ``(gt, detections_of_that_image)``; images without any get none."""
    by_id = {}
    for gt in ground_truths:
        if gt.image_id in by_id:
            raise ValueError(f"Duplicate ground-truth image_id {gt.image_id!r}.")
        by_id[gt.image_id] = []
    for det in detections:
        if det.image_id not in by_id:
            raise ValueError(f"Detections for unknown image_id {det.image_id!r}.")
        by_id[det.image_id].append(det)
    for gt in ground_truths:
        dets = by_id[gt.image_id]
        yield gt, ImageDetections(
            gt.image_id,
            np.concatenate([d.boxes for d in dets]) if dets else np.zeros((0, 4)),
            np.concatenate([d.scores for d in dets]) if dets else np.zeros(0),
            np.concatenate([d.classes for d in dets]) if dets else np.zeros(0, int),
        )


def _num_classes(ground_truths, detections):
    top = [-1]
    top += [int(gt.classes.max()) for gt in ground_truths if len(gt.classes)]
    top += [int(d.classes.max()) for d in detections if len(d.classes)]
    return max(top) + 1


def _coco_boxes(pixels):
    """Pixel corners ``(N, 4)`` -> pixel ``[x, y, w, h]`` lists (COCO's bbox format)."""
    xywh = np.concatenate([pixels[:, :2], pixels[:, 2:] - pixels[:, :2]], axis=1)
    return xywh.tolist()


def _category_ids(category_ids, num_classes):
    """COCO category id of each class ``0..C-1``; default ``k + 1``."""
    if category_ids is None:
        return list(range(1, num_classes + 1))
    if len(category_ids) != num_classes:
        raise ValueError(f"{len(category_ids)} category_ids for {num_classes} classes.")
    return [int(c) for c in category_ids]


def _coco_image_ids(ground_truths):
    """COCO image id of each record: its own when all are integers (so results
    files name the original images and pycocotools sorts them as on the original
    file), else ``1, 2, ...`` in order (callers' ids need not be integers)."""
    ids = [gt.image_id for gt in ground_truths]
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return [int(i) for i in ids]
    return list(range(1, len(ids) + 1))


def coco_results(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    category_ids: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
) -> List[Dict[str, object]]:
    """Detections in COCO's results format, for test-dev and pycocotools' ``loadRes``.

    Args:
        ground_truths: the evaluated images (for their ids and original sizes).
        detections: `ImageDetections` of those images.
        category_ids, num_classes: as in `coco_metrics`.

    Returns:
        One ``{"image_id", "category_id", "bbox", "score"}`` per detection, in
        image order then the given order: the image's id (see `_coco_image_ids`),
        the class's COCO category id, ``bbox`` pixel ``[x, y, w, h]`` in the
        original image.
    """
    ground_truths, detections = list(ground_truths), list(detections)
    if num_classes is None:
        num_classes = _num_classes(ground_truths, detections)
    category_ids = _category_ids(category_ids, num_classes)
    results = []
    pairs = zip(_coco_image_ids(ground_truths), _pair_up(ground_truths, detections))
    for coco_id, (gt, det) in pairs:
        boxes = _coco_boxes(pixel_boxes(det.boxes, gt.height, gt.width))
        for box, cls, score in zip(boxes, det.classes, det.scores):
            results.append({
                "image_id": coco_id, "category_id": category_ids[cls],
                "bbox": box, "score": float(score),
            })
    return results


def detections_from_coco_results(
    results: Sequence[Dict[str, object]],
    ground_truths: Sequence[ImageGroundTruth],
    category_ids: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
) -> List[ImageDetections]:
    """The inverse of `coco_results`: `ImageDetections` of ``ground_truths``' images.

    Raises:
        ValueError: naming the first result whose image or category is unknown.
    """
    ground_truths = list(ground_truths)
    if num_classes is None:
        num_classes = _num_classes(ground_truths, [])
    class_of = {c: k for k, c in enumerate(_category_ids(category_ids, num_classes))}
    image_of = dict(zip(_coco_image_ids(ground_truths), ground_truths))
    rows = {coco_id: [] for coco_id in image_of}
    for index, result in enumerate(results):
        image_id, category = result.get("image_id"), result.get("category_id")
        if image_id not in image_of:
            raise ValueError(f"Result {index}: image_id {image_id!r} is not in the dataset.")
        if category not in class_of:
            raise ValueError(f"Result {index}: category_id {category!r} is not in the dataset.")
        rows[image_id].append((result["bbox"], class_of[category], result["score"]))
    detections = []
    for coco_id, gt in image_of.items():
        xywh = np.array([r[0] for r in rows[coco_id]], np.float64).reshape(-1, 4)
        corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        detections.append(ImageDetections(
            gt.image_id, corners / np.array([gt.width, gt.height] * 2, np.float64),
            [r[2] for r in rows[coco_id]], [r[1] for r in rows[coco_id]],
        ))
    return detections


def _in_memory_coco(dataset):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    num_classes: Optional[int] = None,
    category_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Optional[float]]:
    """COCO box AP / AR, computed by pycocotools on in-memory COCO objects.

    Difficult objects become ``iscrowd`` regions: pycocotools then ignores them and
    every detection that lands on them (COCO's own crowd boxes arrive as
    difficult). The S/M/L ranges use `ImageGroundTruth.areas`, which for COCO
    sources are the annotation areas, so on a COCO split this equals pycocotools
    on the original annotation file with the `coco_results` of ``detections``.

    Args:
        ground_truths: one `ImageGroundTruth` per evaluated image.
        detections: `ImageDetections` (several records per image are merged).
        num_classes: ``C``; default: one more than the largest class id seen.
        category_ids: COCO category id of each contiguous class ``0..C-1``
            (default ``k + 1``); only the ids change, not the result.

    Returns:
        ``{name: value in [0, 1] or None}`` for `COCO_METRICS`; None where
        pycocotools reports -1 (no ground truth in that range).
    """
    from pycocotools.cocoeval import COCOeval

    ground_truths, detections = list(ground_truths), list(detections)
    if num_classes is None:
        num_classes = _num_classes(ground_truths, detections)
    category_ids = _category_ids(category_ids, num_classes)
    images, gt_anns = [], []
    # pycocotools marks "unmatched" with annotation id 0, so ids start at 1.
    for coco_id, gt in zip(_coco_image_ids(ground_truths), ground_truths):
        images.append({"id": coco_id, "height": gt.height, "width": gt.width})
        boxes = _coco_boxes(annotated_pixel_boxes(gt.boxes, gt.height, gt.width))
        for box, cls, hard, area in zip(boxes, gt.classes, gt.difficult, gt.areas):
            gt_anns.append({
                "id": len(gt_anns) + 1, "image_id": coco_id,
                "category_id": category_ids[cls], "bbox": box,
                "area": float(area), "iscrowd": int(hard),
            })
    # As pycocotools' loadRes makes them from a results file.
    dt_anns = [
        {**r, "id": k, "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
        for k, r in enumerate(
            coco_results(ground_truths, detections, category_ids, num_classes), 1
        )
    ]
    categories = [{"id": c, "name": str(c)} for c in category_ids]
    coco_gt = _in_memory_coco(
        {"images": images, "annotations": gt_anns, "categories": categories}
    )
    coco_dt = _in_memory_coco(
        {"images": images, "annotations": dt_anns, "categories": categories}
    )
    evaluator = COCOeval(coco_gt, coco_dt, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        name: (None if value < 0 else float(value))
        for name, value in zip(COCO_METRICS, evaluator.stats)
    }


def voc07_average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP.

    Args:
        recall, precision: ``(D,)`` cumulative values over score-sorted detections.

    Returns:
        mean over ``t in {0, 0.1, ..., 1}`` of the best precision at recall >= t
        (0 where recall never reaches t).
    """
    recall, precision = np.asarray(recall), np.asarray(precision)
    points = []
    for t in np.linspace(0.0, 1.0, 11):
        reached = recall >= t
        points.append(precision[reached].max() if reached.any() else 0.0)
    return float(np.mean(points))


def _voc_labels(gt_boxes, gt_difficult, det_boxes, det_scores, iou_threshold):
    """Greedy VOC matching of one image's detections of one class.

    Returns:
        ``(K,)`` int8: 1 true positive, 0 false positive, -1 ignored (its best
        overlap is a difficult object), in the order of ``det_boxes``.
    """
    return _voc_match(gt_boxes, gt_difficult, det_boxes, det_scores, iou_threshold)[0]


def _voc_match(gt_boxes, gt_difficult, det_boxes, det_scores, iou_threshold):
    """`_voc_labels` and, per detection, the index of the object it matched.

    Returns:
        ``(labels (K,) int8, matched (K,) int64)``: ``matched`` is the row of
        ``gt_boxes`` a true positive or ignored detection hit, -1 for a false
        positive.
    """
    labels = np.zeros(len(det_boxes), np.int8)
    matched = -np.ones(len(det_boxes), np.int64)
    if len(gt_boxes) == 0:
        return labels, matched
    overlaps = pairwise_iou(det_boxes, gt_boxes)
    best = overlaps.argmax(axis=1)
    taken = np.zeros(len(gt_boxes), bool)
    for k in np.argsort(-det_scores, kind="stable"):
        j = best[k]
        if not _hits(overlaps[k, j], iou_threshold):
            continue
        if gt_difficult[j]:
            labels[k], matched[k] = -1, j
        elif not taken[j]:
            labels[k], taken[j], matched[k] = 1, True, j
    return labels, matched


def voc07_metrics(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    num_classes: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    iou_threshold: float = TRUE_POSITIVE_IOU,
) -> Dict[str, object]:
    """PASCAL VOC2007 11-point mAP, with the devkit's matching rules.

    Per class, detections are taken in decreasing score (ties: the order given) and
    each matches the object it overlaps most if IoU > ``iou_threshold``: a first
    hit on a normal object is a true positive, a repeat hit a false positive, a
    hit on a difficult object is dropped. Difficult objects are not in the recall
    denominator. IoU is on continuous coordinates (the devkit's +1 pixel
    convention does not apply to relative boxes).

    Returns:
        ``{"mAP": float, "per_class": {name: AP or None}}``: None for a class with
        no non-difficult object, which the mean then skips.
    """
    if num_classes is None:
        num_classes = _num_classes(ground_truths, detections)
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class_names for {num_classes} classes.")
    scores = [[] for _ in range(num_classes)]
    labels = [[] for _ in range(num_classes)]
    positives = np.zeros(num_classes, np.int64)
    for gt, det in _pair_up(ground_truths, detections):
        gt_pixels = annotated_pixel_boxes(gt.boxes, gt.height, gt.width)
        det_pixels = pixel_boxes(det.boxes, gt.height, gt.width)
        for k in range(num_classes):
            is_gt, is_det = gt.classes == k, det.classes == k
            positives[k] += np.count_nonzero(is_gt & ~gt.difficult)
            if not is_det.any():
                continue
            scores[k].append(det.scores[is_det])
            labels[k].append(_voc_labels(
                gt_pixels[is_gt], gt.difficult[is_gt], det_pixels[is_det],
                det.scores[is_det], iou_threshold,
            ))
    per_class = {}
    for k, name in enumerate(class_names):
        if positives[k] == 0:
            per_class[name] = None
            continue
        if not scores[k]:
            per_class[name] = 0.0
            continue
        # Per-image greedy labels in a stable score order equal the devkit's single
        # pass over all images, because matches never cross images.
        # Ignored detections (-1) add neither a TP nor an FP, so they only repeat a
        # point of the precision/recall curve and leave the AP unchanged.
        order = np.argsort(-np.concatenate(scores[k]), kind="stable")
        class_labels = np.concatenate(labels[k])[order]
        tp = np.cumsum(class_labels == 1)
        fp = np.cumsum(class_labels == 0)
        per_class[name] = voc07_average_precision(
            tp / positives[k], tp / np.maximum(tp + fp, 1)
        )
    valid = [ap for ap in per_class.values() if ap is not None]
    return {"mAP": float(np.mean(valid)) if valid else None, "per_class": per_class}


def recall_by_scale(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    score_thresholds: Sequence[float] = DEFAULT_SCORE_THRESHOLDS,
    iou_threshold: float = TRUE_POSITIVE_IOU,
    class_aware: bool = True,
) -> Dict[str, object]:
    """The paper's recall of small / medium / large objects.

    At each score threshold ``t``, an object is recalled if some detection with
    score >= ``t`` (and, when ``class_aware``, of the object's class) has
    IoU > ``iou_threshold`` with it (VOC07's rule). Detections are used as given
    (the decoder's per-class NMS and top-k already applied). Scales are
    `scale_of_area` of `ImageGroundTruth.areas` (32x32 px is medium, 96x96
    large); difficult objects are left out.

    Returns:
        ``{"iou_threshold", "class_aware", "thresholds": {str(t): {scale:
        {"recalled": int, "total": int}}}}`` with scales `SCALES` and ``"all"``.
    """
    best_scores, scales = [], []
    for gt, det in _pair_up(ground_truths, detections):
        keep = ~gt.difficult
        gt_pixels = annotated_pixel_boxes(gt.boxes[keep], gt.height, gt.width)
        det_pixels = pixel_boxes(det.boxes, gt.height, gt.width)
        hits = _hits(pairwise_iou(det_pixels, gt_pixels), iou_threshold)  # (K, N)
        if class_aware:
            hits &= det.classes[:, None] == gt.classes[keep][None, :]
        # An object is recalled at t iff its best-scoring hit has score >= t.
        hit_scores = np.where(hits, det.scores[:, None], -np.inf)
        best_scores.append(hit_scores.max(axis=0, initial=-np.inf))
        scales.append(scale_of_area(gt.areas[keep]))
    best_scores = np.concatenate(best_scores) if best_scores else np.zeros(0)
    scales = np.concatenate(scales) if scales else np.zeros(0, int)
    thresholds = {}
    for t in score_thresholds:
        recalled = best_scores >= t
        counts = {
            name: {
                "recalled": int(np.count_nonzero(recalled[scales == s])),
                "total": int(np.count_nonzero(scales == s)),
            }
            for s, name in enumerate(SCALES)
        }
        counts["all"] = {
            "recalled": int(np.count_nonzero(recalled)), "total": len(recalled)
        }
        thresholds[str(t)] = counts
    return {
        "iou_threshold": iou_threshold,
        "class_aware": class_aware,
        "thresholds": thresholds,
    }


def match_detections(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    iou_threshold: float = TRUE_POSITIVE_IOU,
) -> Dict[str, np.ndarray]:
    """Labels every detection true / false positive with VOC07's per-class greedy
    matching (`voc07_metrics`' rules), and gives it a scale.

    A true positive's scale is its object's (`scale_of_area` of
    `ImageGroundTruth.areas`); a false positive's is that of its own box in
    pixels of the same ``height x width`` (so with the ground truth sized on the
    network input, both are sized there). This is COCO's convention for AP_S/M/L:
    a matched detection belongs to its object's range, an unmatched one to its
    own area's.

    Returns:
        ``{"scores": (D,) float, "labels": (D,) int8 (1 TP, 0 FP, -1 ignored: it
        hit a difficult object), "scales": (D,) indices into SCALES,
        "num_images": int}`` over all images' detections.
    """
    scores, labels, scales, num_images = [], [], [], 0
    for gt, det in _pair_up(ground_truths, detections):
        num_images += 1
        gt_pixels = annotated_pixel_boxes(gt.boxes, gt.height, gt.width)
        det_pixels = pixel_boxes(det.boxes, gt.height, gt.width)
        det_areas = np.prod(np.maximum(det_pixels[:, 2:] - det_pixels[:, :2], 0.0), axis=1)
        gt_scales = scale_of_area(gt.areas)
        for k in np.unique(det.classes):
            is_gt, is_det = gt.classes == k, det.classes == k
            class_labels, matched = _voc_match(
                gt_pixels[is_gt], gt.difficult[is_gt], det_pixels[is_det],
                det.scores[is_det], iou_threshold,
            )
            det_scales = scale_of_area(det_areas[is_det])
            hit = matched >= 0
            det_scales[hit] = gt_scales[is_gt][matched[hit]]
            scores.append(det.scores[is_det])
            labels.append(class_labels)
            scales.append(det_scales)
    return {
        "scores": np.concatenate(scores) if scores else np.zeros(0),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int8),
        "scales": np.concatenate(scales) if scales else np.zeros(0, np.int64),
        "num_images": num_images,
    }


def precision_by_scale(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    score_thresholds: Sequence[float] = DEFAULT_SCORE_THRESHOLDS,
    iou_threshold: float = TRUE_POSITIVE_IOU,
) -> Dict[str, object]:
    """True and false positives by scale at each score threshold, the other half
    of `recall_by_scale`: if a loss only shifts every score up, recall at a
    threshold rises and so do the false positives.

    Detections with score >= ``t`` are labelled by `match_detections` (class-aware,
    IoU > ``iou_threshold``, one true positive per object, hits on difficult
    objects ignored). Greedy matching goes in decreasing score, so the labels of
    the detections above ``t`` do not depend on those below it.

    Returns:
        ``{"iou_threshold", "num_images", "thresholds": {str(t): {scale:
        {"true_positives": int, "false_positives": int}}}}`` with scales `SCALES`
        and ``"all"``. Precision is ``TP / (TP + FP)``, false positives per image
        ``FP / num_images``.
    """
    matches = match_detections(ground_truths, detections, iou_threshold)
    scores, labels, scales = matches["scores"], matches["labels"], matches["scales"]
    thresholds = {}
    for t in score_thresholds:
        kept = scores >= t
        counts = {}
        for s, name in [*enumerate(SCALES), (None, "all")]:
            here = kept if s is None else kept & (scales == s)
            counts[name] = {
                "true_positives": int(np.count_nonzero(here & (labels == 1))),
                "false_positives": int(np.count_nonzero(here & (labels == 0))),
            }
        thresholds[str(t)] = counts
    return {
        "iou_threshold": iou_threshold,
        "num_images": matches["num_images"],
        "thresholds": thresholds,
    }


def detection_calibration(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    num_bins: int = 10,
    iou_threshold: float = TRUE_POSITIVE_IOU,
) -> Optional[Dict[str, list]]:
    """`keras_scb.calibration.calibration_bins` of the detections labelled by
    `match_detections` (hits on difficult objects left out); ``None`` when some
    score is not a probability in ``[0, 1]`` (e.g. a results file of logits,
    which the other metrics rank fine but calibration cannot bin)."""
    matches = match_detections(ground_truths, detections, iou_threshold)
    counted = matches["labels"] >= 0
    scores = matches["scores"][counted]
    if ((scores < 0.0) | (scores > 1.0)).any():
        return None
    return calibration_bins(scores, matches["labels"][counted] == 1, num_bins)


NON_FINITE_POLICIES = ("raise", "drop")


def _bad_classes(classes, num_classes):
    return classes[(classes < 0) | (classes >= num_classes)].tolist()


def validate_inputs(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    num_classes: int,
    non_finite: str = "raise",
):
    """Checks the inputs of `evaluate_detections`; errors name the image.

    Ground truth must have finite boxes and areas, class ids in ``0..C-1`` and a
    positive image size. Detections must have class ids in ``0..C-1``; a detection with a
    non-finite box or score (a model gone NaN) is an error, or with
    ``non_finite="drop"`` is left out and counted (NaN would otherwise compare as
    a match in some metrics and give a perfect score).

    Returns:
        ``(detections, dropped)``: the detections to evaluate and how many rows
        were dropped.

    Raises:
        ValueError: naming the image and the bad values.
    """
    if non_finite not in NON_FINITE_POLICIES:
        raise ValueError(f"non_finite must be one of {NON_FINITE_POLICIES}; got {non_finite!r}.")
    for gt in ground_truths:
        if not (gt.height > 0 and gt.width > 0):
            raise ValueError(f"Image {gt.image_id!r}: image size {gt.height}x{gt.width}.")
        if not (np.isfinite(gt.boxes).all() and np.isfinite(gt.areas).all()):
            raise ValueError(f"Image {gt.image_id!r}: non-finite ground-truth boxes or areas.")
        bad = _bad_classes(gt.classes, num_classes)
        if bad:
            raise ValueError(
                f"Image {gt.image_id!r}: ground-truth class ids {bad} outside 0..{num_classes - 1}."
            )
    kept, dropped = [], 0
    for det in detections:
        bad = _bad_classes(det.classes, num_classes)
        if bad:
            raise ValueError(
                f"Image {det.image_id!r}: detection class ids {bad} outside 0..{num_classes - 1}."
            )
        finite = np.isfinite(det.boxes).all(axis=1) & np.isfinite(det.scores)
        if finite.all():
            kept.append(det)
            continue
        if non_finite == "raise":
            raise ValueError(
                f"Image {det.image_id!r}: {np.count_nonzero(~finite)} of {len(finite)} "
                "detections have a non-finite box or score (pass non_finite='drop' to "
                "drop and count them)."
            )
        dropped += int(np.count_nonzero(~finite))
        kept.append(ImageDetections(
            det.image_id, det.boxes[finite], det.scores[finite], det.classes[finite]
        ))
    return kept, dropped


def evaluate_detections(
    ground_truths: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    class_names: Optional[Sequence[str]] = None,
    category_ids: Optional[Sequence[int]] = None,
    score_thresholds: Sequence[float] = DEFAULT_SCORE_THRESHOLDS,
    class_aware_recall: bool = True,
    non_finite: str = "raise",
) -> Dict[str, object]:
    """All metrics of one run: ``{"coco": ..., "voc07": ..., "recall_by_scale": ...,
    "precision_by_scale": ..., "calibration": ...}``.

    ``class_names`` fixes ``C`` (default: inferred from the largest id seen);
    see `coco_metrics`, `voc07_metrics` and `recall_by_scale`. The inputs are
    checked first (`validate_inputs`): a non-finite box or score, or a class id
    outside ``0..C-1``, is a ``ValueError`` naming the image; with
    ``non_finite="drop"`` non-finite detections are dropped instead and their
    count is in the result as ``"dropped_non_finite"``.
    """
    ground_truths, detections = list(ground_truths), list(detections)
    num_classes = (
        len(class_names) if class_names is not None
        else _num_classes(ground_truths, detections)
    )
    detections, dropped = validate_inputs(ground_truths, detections, num_classes, non_finite)
    results = {
        "coco": coco_metrics(ground_truths, detections, num_classes, category_ids),
        "voc07": voc07_metrics(ground_truths, detections, num_classes, class_names),
        "recall_by_scale": recall_by_scale(
            ground_truths, detections, score_thresholds, class_aware=class_aware_recall
        ),
        "precision_by_scale": precision_by_scale(ground_truths, detections, score_thresholds),
        "calibration": detection_calibration(ground_truths, detections),
    }
    if non_finite == "drop":
        results["dropped_non_finite"] = dropped
    return results


# --- Reporting -----------------------------------------------------------------


def write_coco_results(results: Sequence[Dict[str, object]], path: str) -> None:
    """Writes `coco_results` as the JSON list COCO's servers and ``loadRes`` take;
    through a temporary file, so an interrupted write leaves no partial file."""
    write_json(list(results), path, indent=None)


def read_coco_results(path: str) -> List[Dict[str, object]]:
    """A COCO results JSON: a list of ``{"image_id", "category_id", "bbox", "score"}``."""
    try:
        with open(path) as f:
            results = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed JSON: {error}") from None
    keys = {"image_id", "category_id", "bbox", "score"}
    if not isinstance(results, list):
        raise ValueError(f"{path}: not a COCO results file (a JSON list of detections).")
    for index, result in enumerate(results):
        if not isinstance(result, dict) or not keys <= set(result):
            raise ValueError(f"{path}: result {index} lacks one of {sorted(keys)}: {result!r}")
    return results


def load_results(run: Union[str, Dict[str, object]]) -> Dict[str, object]:
    """A results dict, or the JSON file (or a directory holding ``metrics.json``)."""
    if isinstance(run, dict):
        return run
    if os.path.isdir(run):
        run = os.path.join(run, "metrics.json")
    results = read_json(run, "results file")
    if not isinstance(results, dict):
        raise ValueError(f"results file {run} holds no evaluation results (not a JSON object).")
    return results


@dataclasses.dataclass(frozen=True)
class _Row:
    """One displayed metric: value in percent (None if undefined) and its text."""

    name: str
    percent: Optional[float]
    text: str


def _percent_row(name, fraction):
    if fraction is None:
        return _Row(name, None, "-")
    return _Row(name, 100.0 * fraction, f"{100.0 * fraction:.2f}")


def _recall_row(name, counts):
    recalled, total = counts["recalled"], counts["total"]
    if total == 0:
        return _Row(name, None, "- (0/0)")
    percent = 100.0 * recalled / total
    return _Row(name, percent, f"{percent:.2f} ({recalled}/{total})")


def _rows(results) -> List[_Row]:
    """Flattens a results dict into displayed rows, section by section."""
    rows = []
    for name, value in results.get("coco", {}).items():
        rows.append(_percent_row(f"COCO {name}", value))
    if "voc07" in results:
        rows.append(_percent_row("VOC07 mAP", results["voc07"]["mAP"]))
        for name, value in results["voc07"]["per_class"].items():
            rows.append(_percent_row(f"VOC07 AP {name}", value))
    if "recall_by_scale" in results:
        for t, counts in results["recall_by_scale"]["thresholds"].items():
            for scale, c in counts.items():
                rows.append(_recall_row(f"Recall@{t} {scale}", c))
    return rows


def _table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def markdown_table(results: Dict[str, object]) -> str:
    """Markdown for one run: a COCO row (Table 5 columns), VOC07 per class, and
    recall by scale (rows: score thresholds; cells like ``73.06 (377/516)``)."""
    sections = []
    if "coco" in results:
        coco = results["coco"]
        sections.append("**COCO**\n\n" + _table(
            list(coco), [[_percent_row("", v).text for v in coco.values()]]
        ))
    if "voc07" in results:
        voc = results["voc07"]
        header = ["mAP"] + list(voc["per_class"])
        values = [voc["mAP"]] + list(voc["per_class"].values())
        sections.append("**VOC07 11-point AP**\n\n" + _table(
            header, [[_percent_row("", v).text for v in values]]
        ))
    if "recall_by_scale" in results:
        recall = results["recall_by_scale"]
        kind = "class-aware" if recall["class_aware"] else "class-agnostic"
        body = [
            [f"score >= {t}"] + [_recall_row("", c).text for c in counts.values()]
            for t, counts in recall["thresholds"].items()
        ]
        scales = list(next(iter(recall["thresholds"].values()), {}))
        sections.append(
            f"**Recall by scale** (IoU > {recall['iou_threshold']}, {kind})\n\n"
            + _table(["threshold"] + scales, body)
        )
    if "precision_by_scale" in results:
        precision = results["precision_by_scale"]
        body = [
            [f"score >= {t}"] + [_precision_text(c, precision["num_images"]) for c in counts.values()]
            for t, counts in precision["thresholds"].items()
        ]
        scales = list(next(iter(precision["thresholds"].values()), {}))
        sections.append(
            f"**Precision by scale** (IoU > {precision['iou_threshold']}; cells: precision "
            "(TP/(TP+FP)), false positives per image)\n\n"
            + _table(["threshold"] + scales, body)
        )
    return "\n\n".join(sections) + "\n"


def _precision_text(counts, num_images):
    tp, fp = counts["true_positives"], counts["false_positives"]
    fpi = f"{fp / num_images:.2f} FP/img" if num_images else "-"
    return f"- ({fpi})" if tp + fp == 0 else f"{100.0 * tp / (tp + fp):.2f} ({fpi})"


def compare(
    run_a: Union[str, Dict[str, object]],
    run_b: Union[str, Dict[str, object]],
    names: Sequence[str] = ("A", "B"),
) -> str:
    """Markdown table of two runs side by side with deltas ``B - A``.

    Args:
        run_a, run_b: results dicts or paths to their JSON (or run directories
            holding ``metrics.json``).
        names: the two column titles.

    Returns:
        The table; a metric missing from one run shows ``-`` there and no delta.
        Deltas are in percentage points.
    """
    rows_a = {r.name: r for r in _rows(load_results(run_a))}
    rows_b = {r.name: r for r in _rows(load_results(run_b))}
    missing = _Row("", None, "-")
    body = []
    for name in list(rows_a) + [n for n in rows_b if n not in rows_a]:
        a, b = rows_a.get(name, missing), rows_b.get(name, missing)
        delta = (
            "-" if a.percent is None or b.percent is None
            else f"{b.percent - a.percent:+.2f}"
        )
        body.append([name, a.text, b.text, delta])
    return _table(["metric", names[0], names[1], f"{names[1]} - {names[0]}"], body) + "\n"

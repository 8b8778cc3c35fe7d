"""Run a ``.tflite`` export in MediaPipe Tasks' ``ObjectDetector`` and compare it with
the LiteRT interpreter's detections (MediaPipe is optional: ``pip install
'keras-scb[clients]'``).

    python -m exporters.mediapipe_check --checkpoint export/model.tflite \\
        --images data/bccd/JPEGImages --count 20 --score_threshold 0.5

MediaPipe reads everything from the file's metadata (`exporters.metadata`): the
image input, which output is which, the labels. The file is used as written, and
each image is given to both at the model's input size (so that neither resizes).
MediaPipe reports integer pixel boxes (origin and size truncated); the
interpreter's boxes are expressed the same way before the IoU. Detections are
matched as sets, by class and IoU (`exporters.accuracy.detection_agreement`), so
equal scores in another order do not count as differences.
"""

import os
from typing import Sequence

import numpy as np
from absl import flags

from exporters import accuracy, common, metadata, runtime
from keras_scb import cli
from keras_scb import flags as common_flags


def mediapipe_detections(model_path, images, score_threshold: float, max_results: int):
    """MediaPipe's ``ObjectDetector`` on uint8 ``(N, S, S, 3)`` images.

    Returns:
        dict of `exporters.common.DETECTION_KEYS` arrays ``(N, max_results, ...)``,
        one row per category of a detection, boxes ``[ymin, xmin, ymax, xmax]``
        relative, classes MediaPipe's
        ``Category.index`` where it gives one, else the label line of its
        ``category_name`` (a file exported with ``--mediapipe_categories``
        ``indices`` or ``names``, `exporters.metadata`); and ``indexed`` /
        ``named`` ``(N, max_results)`` bool: which of the two MediaPipe set.
    """
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    with open(model_path, "rb") as f:
        embedded = metadata.associated_files(f.read()).get(common.LABELS_FILE, b"")
    labels = embedded.decode().split("\n")
    options = vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_path=os.fspath(model_path)),
        score_threshold=score_threshold,
        max_results=max_results,
    )
    size = images.shape[1]
    out = _empty(len(images), max_results)
    out["indexed"] = np.zeros((len(images), max_results), bool)
    out["named"] = np.zeros((len(images), max_results), bool)
    with vision.ObjectDetector.create_from_options(options) as detector:
        for i, image in enumerate(images):
            result = detector.detect(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
            )
            # Detections of one box in several classes come back as one detection
            # with a category each (MediaPipe merges identical boxes): one row each.
            rows = [(d.bounding_box, c) for d in result.detections for c in d.categories]
            out["num_detections"][i] = min(len(rows), max_results)
            for k, (box, category) in enumerate(rows[:max_results]):
                out["detection_boxes"][i, k] = np.array([
                    box.origin_y, box.origin_x,
                    box.origin_y + box.height, box.origin_x + box.width,
                ]) / size
                out["indexed"][i, k] = category.index is not None
                out["named"][i, k] = bool(category.category_name)
                out["detection_classes"][i, k] = (
                    category.index if category.index is not None
                    else labels.index(category.category_name) if category.category_name
                    else -1
                )
                out["detection_scores"][i, k] = category.score
    return out


def interpreter_detections(model_path, images, score_threshold: float):
    """The LiteRT interpreter's detections at ``score >= score_threshold``, boxes
    in MediaPipe's integer pixels (origin and size truncated), as ratios."""
    outputs = runtime.TFLiteDetector(model_path)(images)
    size = images.shape[1]
    boxes = outputs["detection_boxes"] * size
    origin = np.floor(boxes[..., :2])
    extent = np.floor(boxes[..., 2:] - boxes[..., :2])
    outputs["detection_boxes"] = np.concatenate([origin, origin + extent], axis=-1) / size
    kept = outputs["detection_scores"] >= score_threshold
    outputs["num_detections"] = np.minimum(outputs["num_detections"], kept.sum(axis=1))
    return outputs


def _empty(count, k):
    return {
        "detection_boxes": np.zeros((count, k, 4), np.float32),
        "detection_classes": np.zeros((count, k), np.float32),
        "detection_scores": np.zeros((count, k), np.float32),
        "num_detections": np.zeros((count,), np.float32),
    }


def compare(model_path, images, score_threshold: float = 0.5, iou_threshold: float = 0.9):
    """MediaPipe against the interpreter on ``images`` (uint8 ``(N, S, S, 3)``).

    Returns:
        dict: ``matched`` interpreter detections found by MediaPipe (same class,
        IoU >= ``iou_threshold``) of ``total``; ``mediapipe_total``, of which
        ``indexed`` had ``Category.index`` set and ``named`` a ``category_name``;
        ``max_score_diff`` and ``min_iou`` of the matches.
    """
    reference = interpreter_detections(model_path, images, score_threshold)
    k = reference["detection_scores"].shape[1]
    candidate = mediapipe_detections(model_path, images, score_threshold, k)
    agreement = accuracy.detection_agreement(reference, candidate, top_k=k, iou_threshold=iou_threshold)
    return {
        "matched": round(agreement["matched"] * agreement["count"]),
        "total": agreement["count"],
        "mediapipe_total": int(candidate["num_detections"].sum()),
        "indexed": int(candidate["indexed"].sum()),
        "named": int(candidate["named"].sum()),
        "max_score_diff": agreement["max_score_diff"],
        "min_iou": agreement["min_iou"],
    }


def load_images(folder, image_size: int, count: int) -> np.ndarray:
    """The first ``count`` JPEG/PNG images of ``folder`` (sorted), resized to the
    model's size as `exporters.tflite.folder_images` does."""
    from exporters.tflite import folder_images

    return np.stack(list(folder_images(folder, image_size, count)))


def _define_flags():
    flags.DEFINE_string("checkpoint", None, "A .tflite file written by exporters.tflite.")
    flags.DEFINE_string("images", None, "A folder of JPEG/PNG images.")
    flags.DEFINE_integer("count", 20, "How many images of --images.")
    flags.DEFINE_float("score_threshold", 0.5, "Detections compared: score >= this.")
    cli.define_renamed("model", "checkpoint")
    common_flags.at_least("count", 1)
    common_flags.between("score_threshold", 0, 1)
    flags.mark_flags_as_required(["checkpoint", "images"])


def main(argv: Sequence[str]):
    del argv
    values = flags.FLAGS
    size = runtime.TFLiteDetector(values.checkpoint).image_size
    images = load_images(values.images, size, values.count)
    result = compare(values.checkpoint, images, values.score_threshold)
    print(
        f"{values.checkpoint}: MediaPipe ObjectDetector vs LiteRT interpreter on {len(images)} images, "
        f"score >= {values.score_threshold}: {result['matched']}/{result['total']} matched "
        f"(MediaPipe gave {result['mediapipe_total']}: {result['indexed']} with Category.index, "
        f"{result['named']} with category_name), max score diff "
        f"{result['max_score_diff']}, min IoU {result['min_iou']}."
    )


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

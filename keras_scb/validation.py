"""Evaluating a detector on a dataset: predictions -> metrics -> report.

The library side of ``python -m keras_scb.evaluate`` and of the evaluation during
and after training (`keras_scb.train`): `predict_detections` runs the network and
its `keras_scb.postprocess.PostProcessor`, `evaluate_detector` scores the result
with the metrics of `keras_scb.evaluation`, `write_report` writes it.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_scb.data.pipeline import validation_pipeline
from keras_scb.evaluation import (
    ImageDetections,
    ImageGroundTruth,
    coco_results,
    detections_from_coco_results,
    detections_from_decoder,
    evaluate_detections,
    markdown_table,
    read_coco_results,
    precision_by_scale,
    recall_by_scale,
    write_coco_results,
    write_json,
)
from keras_scb.postprocess import decode_function


def predict_detections(
    detector: Any, source: Any, batch_size: int = 8, **decoder_kwargs
) -> Tuple[List[ImageGroundTruth], List[ImageDetections]]:
    """Runs ``detector`` on every image of ``source`` and decodes with NMS.

    Works under every Keras backend: the network runs through
    ``predict_on_batch``; the decoding (TensorFlow) runs on its numpy output.

    Args:
        detector: a `keras_scb.models.Detector`.
        source: a `Dataset`, `TFRecordSource` or TFRecord metadata path.
        **decoder_kwargs: `keras_scb.postprocess.PostProcessor` options
            (default: `keras_scb.postprocess.DECODER_DEFAULTS`).

    Returns:
        ``(ground_truths, detections)``: lists of
        `keras_scb.evaluation.ImageGroundTruth` and `ImageDetections`, in order.
    """
    decode = decode_function(detector, **decoder_kwargs)
    ground_truths, detections = [], []
    batches = validation_pipeline(
        source, batch_size=batch_size, image_size=detector.image_size
    )
    for images, info in batches:
        raw = np.asarray(detector.predict_on_batch(images.numpy()))
        out = {k: v.numpy() for k, v in decode(tf.constant(raw)).items()}
        info = {k: v.numpy() for k, v in info.items()}
        detections += detections_from_decoder(
            info["image_id"].tolist(), out["boxes"], out["scores"], out["classes"],
            out["num_detections"],
        )
        ground_truths += _ground_truths(info)
    return ground_truths, detections


def _ground_truths(info):
    """`ImageGroundTruth` of a batch's ``info`` (see `validation_pipeline`), as numpy."""
    ground_truths = []
    for b, image_id in enumerate(info["image_id"].tolist()):
        real = info["classes"][b] >= 0
        ground_truths.append(ImageGroundTruth(
            image_id, int(info["height"][b]), int(info["width"][b]),
            info["boxes"][b][real], info["classes"][b][real], info["difficult"][b][real],
            info["areas"][b][real],
        ))
    return ground_truths


def source_ground_truths(source: Any, batch_size: int = 8) -> List[ImageGroundTruth]:
    """`ImageGroundTruth` of every image of ``source``, read as `predict_detections`
    reads them (the images are decoded, at a token size, but not used)."""
    ground_truths = []
    for _, info in validation_pipeline(source, batch_size=batch_size, image_size=8):
        ground_truths += _ground_truths({k: v.numpy() for k, v in info.items()})
    return ground_truths


def score_coco_results(source: Any, path: str, batch_size: int = 8) -> Dict[str, Any]:
    """All metrics (see `keras_scb.evaluation`) of a COCO results JSON on ``source``."""
    ground_truths = source_ground_truths(source, batch_size)
    detections = detections_from_coco_results(
        read_coco_results(path), ground_truths, source.category_ids,
        len(source.class_names),
    )
    return evaluate_detections(
        ground_truths, detections, class_names=source.class_names,
        category_ids=source.category_ids,
    )


def evaluate_detector(
    detector: Any,
    source: Any,
    batch_size: int = 8,
    results_json: Optional[str] = None,
    **decoder_kwargs,
) -> Dict[str, Any]:
    """All metrics of ``detector`` on ``source`` (see `keras_scb.evaluation`);
    with ``results_json``, the detections are also written there in COCO's
    results format."""
    ground_truths, detections = predict_detections(
        detector, source, batch_size, **decoder_kwargs
    )
    if results_json:
        write_coco_results(
            coco_results(
                ground_truths, detections, source.category_ids, len(source.class_names)
            ),
            results_json,
        )
    results = evaluate_detections(
        ground_truths,
        detections,
        class_names=source.class_names,
        category_ids=source.category_ids,
    )
    # The paper sizes objects on the original image; the anchors see them at the
    # network input, which for BCCD (640x480 -> 300x300) moves most platelets
    # from medium to small. Both are reported.
    size = detector.image_size
    # areas=None: the boxes' areas at the input, what the anchors see.
    at_input = [
        dataclasses.replace(gt, height=size, width=size, areas=None) for gt in ground_truths
    ]
    results["recall_by_scale_at_input"] = recall_by_scale(at_input, detections)
    results["precision_by_scale_at_input"] = precision_by_scale(at_input, detections)
    return results


def summary_scalars(results: Dict[str, Any]) -> Dict[str, float]:
    """The headline numbers of a results dict, flat, for Keras logs and CSV files."""
    def number(value):  # None: the metric is undefined (no objects of that kind)
        return float("nan") if value is None else float(value)

    scalars = {f"coco_{k}": number(v) for k, v in results["coco"].items()}
    scalars["voc07_mAP"] = number(results["voc07"]["mAP"])
    # Per-class AP: a rare class that fails to train is invisible in the mean.
    for name, ap in results["voc07"].get("per_class", {}).items():
        scalars["voc07_AP_" + name.replace(" ", "_")] = number(ap)
    return scalars


def write_report(results: Dict[str, Any], output_dir: str) -> str:
    """Writes ``metrics.json`` and ``metrics.md``; returns the Markdown text."""
    os.makedirs(output_dir, exist_ok=True)
    write_json(results, os.path.join(output_dir, "metrics.json"))
    text = markdown_table(results)
    if "recall_by_scale_at_input" in results:
        at_input = markdown_table({
            key: results[key + "_at_input"] for key in ("recall_by_scale", "precision_by_scale")
            if key + "_at_input" in results
        })
        text += "\nObjects sized on the network input instead of the original image:\n\n"
        text += at_input
    write_text(text, os.path.join(output_dir, "metrics.md"))
    return text

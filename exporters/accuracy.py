"""How much an export changes the detections: agreement with Keras, and mAP drop.

    python -m exporters.accuracy --checkpoint model_dir/best.keras \\
        --dataset bccd --val_split test --precisions fp32,fp16,int8

exports the checkpoint to TFLite at each precision (int8 calibrated on
``--representative_data``) and, with the ``onnx`` extra, to ONNX (``onnx``,
``onnx_fp16``: `ONNX_PRECISIONS`), runs every model (LiteRT, onnxruntime) and
the Keras inference model on the same uint8 images (and exported files given with
``--exports``: ``.tflite``, ``.onnx``, SavedModel folders, through
`exporters.runtime.load_runner`), and prints VOC07 mAP, COCO AP / AP50 and their drop against
Keras, plus the detection agreement of `detection_agreement`. The checkpoint's
class names must be the dataset's (as in `keras_scb.evaluate`).
"""

import json

import numpy as np
from absl import flags

from exporters import common
from keras_scb import cli
from keras_scb import flags as common_flags
from keras_scb.matching import pairwise_iou

# `compare_precisions` names of the ONNX exports -> `exporters.onnx` precisions.
ONNX_PRECISIONS = {"onnx": "fp32", "onnx_fp16": "fp16"}


def detection_agreement(reference, candidate, top_k=10, iou_threshold=0.5):
    """How well ``candidate`` reproduces the ``top_k`` best detections of ``reference``.

    Greedy, per image, best reference detection first: each is matched to the
    unmatched ``candidate`` detection of the same class with the largest IoU, if
    that IoU is at least ``iou_threshold``. Order-free, unlike an elementwise
    comparison, which a tiny score change that swaps two detections would fail.

    Args:
        reference, candidate: dicts of `exporters.common.DETECTION_KEYS` arrays
            for the same ``B`` images.

    Returns:
        dict: ``matched`` (fraction of reference detections matched),
        ``mean_iou`` and ``min_iou`` of the matches, ``max_score_diff`` (largest
        absolute score difference of a match), ``count`` (reference detections).
    """
    ious, score_diffs, count = [], [], 0
    for b in range(len(reference["num_detections"])):
        n_ref = min(int(reference["num_detections"][b]), top_k)
        n_can = int(candidate["num_detections"][b])
        boxes = candidate["detection_boxes"][b, :n_can]
        classes = candidate["detection_classes"][b, :n_can]
        scores = candidate["detection_scores"][b, :n_can]
        free = np.ones(n_can, bool)
        for i in range(n_ref):
            count += 1
            # Both in [ymin, xmin, ymax, xmax]: IoU does not depend on the order.
            overlap = pairwise_iou(reference["detection_boxes"][b, i][None], boxes)[0]
            overlap[(classes != reference["detection_classes"][b, i]) | ~free] = -1.0
            if n_can == 0 or overlap.max() < iou_threshold:
                continue
            j = int(np.argmax(overlap))
            free[j] = False
            ious.append(overlap[j])
            score_diffs.append(abs(scores[j] - reference["detection_scores"][b, i]))
    return {
        "matched": len(ious) / count if count else 1.0,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "min_iou": float(np.min(ious)) if ious else None,
        "max_score_diff": float(np.max(score_diffs)) if score_diffs else None,
        "count": count,
    }


def run_batched(runner, images, batch_size=8):
    """``runner`` over uint8 ``(N, S, S, 3)`` in batches; concatenated outputs."""
    parts = [runner(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return {key: np.concatenate([p[key] for p in parts]) for key in common.DETECTION_KEYS}


def evaluate_outputs(dataset, outputs):
    """`keras_scb.evaluation.evaluate_detections` of one model's outputs on ``dataset``."""
    from keras_scb import evaluation

    ground_truths = [
        evaluation.ImageGroundTruth(
            r.image_id, r.height, r.width, r.boxes, r.classes, r.difficult, r.areas
        )
        for r in dataset.records
    ]
    detections = evaluation.detections_from_decoder(
        [r.image_id for r in dataset.records],
        common.corner_boxes(outputs["detection_boxes"]), outputs["detection_scores"],
        outputs["detection_classes"].astype(np.int64), outputs["num_detections"].astype(np.int64),
    )
    return evaluation.evaluate_detections(
        ground_truths, detections, class_names=dataset.class_names,
        category_ids=dataset.category_ids,
    )


def export_runner(detector, precision, representative_images=None, num_threads=None,
                  **decoder_kwargs):
    """An `exporters.runtime` runner of ``detector`` exported in memory: a TFLite
    precision in the LiteRT interpreter, or one of `ONNX_PRECISIONS` in onnxruntime."""
    from exporters import runtime

    if precision in ONNX_PRECISIONS:
        from exporters import onnx

        model = onnx.convert(detector, ONNX_PRECISIONS[precision], **decoder_kwargs)
        return runtime.OnnxDetector(model.SerializeToString(), num_threads)
    from exporters import tflite

    model = tflite.convert(detector, precision, representative_images, **decoder_kwargs)
    return runtime.TFLiteDetector(model, num_threads)


def compare_precisions(
    detector,
    dataset,
    precisions=("fp32", "fp16", "int8"),
    representative_images=None,
    max_images=None,
    num_threads=None,
    top_k=10,
    exports=(),
    **decoder_kwargs,
):
    """mAP of the Keras model and of its TFLite exports on the same images.

    Args:
        detector: a `keras_scb.models.Detector`.
        dataset: a `keras_scb.data.Dataset` with ground truth.
        precisions: TFLite precisions and `ONNX_PRECISIONS` to export and evaluate.
        representative_images: int8 calibration images (see `exporters.tflite.convert`).
        max_images: evaluate the first ``max_images`` only.
        top_k: the Keras detections per image that `detection_agreement` looks for.
        exports: paths of exported models of ``detector`` to evaluate too, each
            a row named by its path (the exports carry their own decoder settings).
        **decoder_kwargs: decoder options, the same for every model.

    Returns:
        ``{"keras": row, precision: row, ...}``, a row being ``{"voc07_mAP",
        "coco_AP", "coco_AP50", "agreement"}``, and for exports the drops
        ``voc07_mAP_drop``, ``coco_AP_drop`` (Keras minus export).
    """
    from exporters import runtime, tflite

    if max_images is not None:
        dataset = type(dataset)(dataset.records[:max_images], dataset.class_names, dataset.category_ids)
    images = np.stack(list(tflite.dataset_images(dataset, detector.image_size)))
    reference = run_batched(runtime.KerasDetector(detector, **decoder_kwargs), images)
    outputs = {"keras": reference}
    for precision in precisions:
        runner = export_runner(detector, precision, representative_images, num_threads,
                               **decoder_kwargs)
        outputs[precision] = run_batched(runner, images)
    for path in exports:
        outputs[path] = run_batched(runtime.load_runner(path, num_threads), images)
    rows = {}
    for name, output in outputs.items():
        metrics = evaluate_outputs(dataset, output)
        rows[name] = {
            "voc07_mAP": metrics["voc07"]["mAP"],
            "coco_AP": metrics["coco"]["AP"],
            "coco_AP50": metrics["coco"]["AP50"],
            "agreement": detection_agreement(reference, output, top_k=top_k),
        }
        if name != "keras":
            for key in ("voc07_mAP", "coco_AP"):
                rows[name][f"{key}_drop"] = rows["keras"][key] - rows[name][key]
    return rows


def markdown(rows, top_k=10):
    header = (
        f"| model | VOC07 mAP | drop | COCO AP | drop | AP50 | top-{top_k} matched "
        "| mean IoU | min IoU | max score diff |"
    )
    lines = [header, "|" + "---|" * 10]
    for name, row in rows.items():
        agreement = row["agreement"]
        matched = round(agreement["matched"] * agreement["count"])
        lines.append(
            f"| {name} | {row['voc07_mAP']:.4f} | {row.get('voc07_mAP_drop', 0.0):+.4f} "
            f"| {row['coco_AP']:.4f} | {row.get('coco_AP_drop', 0.0):+.4f} | {row['coco_AP50']:.4f} "
            f"| {matched}/{agreement['count']} | {_fmt(agreement['mean_iou'])} "
            f"| {_fmt(agreement['min_iou'])} | {_fmt(agreement['max_score_diff'], '.2e')} |"
        )
    return "\n".join(lines)


def _fmt(value, spec=".4f"):
    return "-" if value is None else format(value, spec)


def _define_flags():
    flags.DEFINE_string("checkpoint", None, "A .keras checkpoint of a Detector.")
    common_flags.define_data_flags()  # --dataset, --data_dir, --val_split (the split scored), ...
    cli.define_renamed("split", "val_split")
    flags.DEFINE_list(
        "precisions", ["fp32", "fp16", "int8"],
        f"TFLite precisions, and ONNX ({', '.join(ONNX_PRECISIONS)}; needs the onnx extra).",
    )
    flags.DEFINE_integer("top_k", 10, "Keras detections per image the agreement looks for.")
    flags.DEFINE_list("exports", [], "Exported files of the checkpoint to evaluate too "
                      "(.tflite, .onnx, SavedModel folders).")
    flags.DEFINE_string("representative_data", "bccd", "int8 calibration: 'bccd', 'synthetic' or a folder.")
    flags.DEFINE_string("representative_split", "train", "Split for --representative_data=bccd.")
    flags.DEFINE_integer("representative_count", 100, "int8 calibration images.")
    flags.DEFINE_integer("max_images", None, "Evaluate the first N images only.")
    flags.DEFINE_string("output_json", None, "Also write the rows as JSON here.")
    common.define_decoder_flags()
    common_flags.at_least("representative_count", 1)
    common_flags.at_least("max_images", 1)
    common_flags.at_least("top_k", 1)
    flags.mark_flags_as_required(["checkpoint"])


def main(argv):
    del argv
    from exporters import tflite
    from keras_scb.checkpoints import check_checkpoint_classes

    values = flags.FLAGS
    if values.output_json:  # the one output rule, before any work
        common.prepare_output(values.output_json, True, [values.checkpoint], flag="--output_json")
    detector = common.load_detector(values.checkpoint)
    dataset = common_flags.load_split(values.val_split)
    check_checkpoint_classes(
        values.checkpoint, detector.num_classes, dataset.class_names,
        common_flags.split_name(values.val_split),
    )
    representative = None
    if "int8" in values.precisions:
        representative = tflite.representative_images(
            values.representative_data, detector.image_size, values.representative_count,
            split=values.representative_split,
        )
    rows = compare_precisions(
        detector, dataset, values.precisions, representative, values.max_images,
        top_k=values.top_k, exports=values.exports, **common.decoder_kwargs_from_flags(values),
    )
    print(markdown(rows, values.top_k))
    if values.output_json:
        common.write_json(rows, values.output_json)
    else:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

"""Evaluates a detector the way the paper does; also the ``--compare`` of two runs.

    python -m keras_scb.evaluate --checkpoint runs/quickstart/best.keras \
        --dataset bccd --val_split test --output_dir runs/quickstart/eval
    python -m keras_scb.evaluate --compare runs/baseline/eval runs/scb/eval
    python -m keras_scb.evaluate --checkpoint best.keras --dataset coco \
        --data_dir coco --val_split val2017 --results_json dets.json
    python -m keras_scb.evaluate --score_results_json dets.json --dataset coco \
        --data_dir coco --val_split val2017

``--results_json`` also writes the detections in COCO's results format (original
image and category ids, pixel ``[x, y, w, h]``, score): the file test-dev takes.
``--score_results_json`` scores such a file against the split without a model.

Prints and writes (``metrics.json``, ``metrics.md``): COCO AP/AR through pycocotools
(the paper's Table 5 columns), VOC07 11-point mAP, and the recall of small / medium
/ large objects at score thresholds 0.01 / 0.1 / 0.3 (NMS 0.45 per class, top 200).
"""

import dataclasses
import os
import sys

import numpy as np
from absl import app, flags

from keras_scb import cli
from keras_scb import flags as common_flags

DECODER_DEFAULTS = dict(iou_threshold=0.45, score_threshold=0.01, max_detections=200)


def predict_detections(detector, source, batch_size=8, **decoder_kwargs):
    """Runs ``detector`` on every image of ``source`` and decodes with NMS.

    Works under every Keras backend: the network runs through
    ``predict_on_batch``; the decoding (TensorFlow) runs on its numpy output.

    Args:
        detector: a `keras_scb.models.Detector`.
        source: a `Dataset`, `TFRecordSource` or TFRecord metadata path.

    Returns:
        ``(ground_truths, detections)``: lists of
        `keras_scb.evaluation.ImageGroundTruth` and `ImageDetections`, in order.
    """
    import tensorflow as tf

    from keras_scb.data.pipeline import validation_pipeline
    from keras_scb.decoding import raw_output_decoder
    from keras_scb.evaluation import detections_from_decoder

    decode = raw_output_decoder(detector, **{**DECODER_DEFAULTS, **decoder_kwargs})
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
    from keras_scb.evaluation import ImageGroundTruth

    ground_truths = []
    for b, image_id in enumerate(info["image_id"].tolist()):
        real = info["classes"][b] >= 0
        ground_truths.append(ImageGroundTruth(
            image_id, int(info["height"][b]), int(info["width"][b]),
            info["boxes"][b][real], info["classes"][b][real], info["difficult"][b][real],
            info["areas"][b][real],
        ))
    return ground_truths


def source_ground_truths(source, batch_size=8):
    """`ImageGroundTruth` of every image of ``source``, read as `predict_detections`
    reads them (the images are decoded, at a token size, but not used)."""
    from keras_scb.data.pipeline import validation_pipeline

    ground_truths = []
    for _, info in validation_pipeline(source, batch_size=batch_size, image_size=8):
        ground_truths += _ground_truths({k: v.numpy() for k, v in info.items()})
    return ground_truths


def score_coco_results(source, path, batch_size=8):
    """All metrics (see `keras_scb.evaluation`) of a COCO results JSON on ``source``."""
    from keras_scb import evaluation

    ground_truths = source_ground_truths(source, batch_size)
    detections = evaluation.detections_from_coco_results(
        evaluation.read_coco_results(path), ground_truths, source.category_ids,
        len(source.class_names),
    )
    return evaluation.evaluate_detections(
        ground_truths, detections, class_names=source.class_names,
        category_ids=source.category_ids,
    )


def evaluate_detector(detector, source, batch_size=8, results_json=None, **decoder_kwargs):
    """All metrics of ``detector`` on ``source`` (see `keras_scb.evaluation`);
    with ``results_json``, the detections are also written there in COCO's
    results format."""
    from keras_scb.evaluation import (
        coco_results, evaluate_detections, recall_by_scale, write_coco_results,
    )

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
    return results


def summary_scalars(results):
    """The headline numbers of a results dict, flat, for Keras logs and CSV files."""
    def number(value):  # None: the metric is undefined (no objects of that kind)
        return float("nan") if value is None else float(value)

    scalars = {f"coco_{k}": number(v) for k, v in results["coco"].items()}
    scalars["voc07_mAP"] = number(results["voc07"]["mAP"])
    # Per-class AP: a rare class that fails to train is invisible in the mean.
    for name, ap in results["voc07"].get("per_class", {}).items():
        scalars["voc07_AP_" + name.replace(" ", "_")] = number(ap)
    return scalars


def write_report(results, output_dir):
    """Writes ``metrics.json`` and ``metrics.md``; returns the Markdown text."""
    from keras_scb.evaluation import markdown_table, write_json

    os.makedirs(output_dir, exist_ok=True)
    write_json(results, os.path.join(output_dir, "metrics.json"))
    text = markdown_table(results)
    if "recall_by_scale_at_input" in results:
        at_input = markdown_table({"recall_by_scale": results["recall_by_scale_at_input"]})
        text += "\nObjects sized on the network input instead of the original image:\n\n"
        text += at_input
    with open(os.path.join(output_dir, "metrics.md"), "w") as f:
        f.write(text)
    return text


def _define_flags():
    common_flags.define_data_flags()
    flags.DEFINE_string("checkpoint", None, "A .keras detector saved by keras_scb.train.")
    flags.DEFINE_string("output_dir", None, "Where metrics.json / metrics.md go "
                        "(default: an 'eval' folder next to the checkpoint).")
    flags.DEFINE_integer("batch_size", 8, "Images per inference batch.")
    flags.DEFINE_list("compare", [], "Two result folders or metrics.json files to print side by side.")
    flags.DEFINE_string("results_json", None, "Also write the detections here in COCO's "
                        "results format (original image and category ids, pixel "
                        "[x, y, w, h], score), e.g. for a test-dev submission.")
    flags.DEFINE_string("score_results_json", None, "Score this COCO results file on "
                        "--val_split instead of running a --checkpoint.")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    from keras_scb.evaluation import compare

    if FLAGS.compare:
        if len(FLAGS.compare) != 2:
            raise app.UsageError(f"--compare takes two runs; got {FLAGS.compare}.")
        runs = [
            os.path.join(p, "metrics.json") if os.path.isdir(p) else p for p in FLAGS.compare
        ]
        for path in runs:
            if not os.path.exists(path):
                raise app.UsageError(f"--compare: {path} does not exist.")
        print(compare(*runs))
        return
    if FLAGS.score_results_json:
        _score_results_json(FLAGS.score_results_json)
        return
    if not FLAGS.checkpoint or not os.path.exists(FLAGS.checkpoint):
        raise app.UsageError(f"--checkpoint={FLAGS.checkpoint!r}: no such file.")
    from keras_scb.checkpoints import load_checkpoint

    detector = load_checkpoint(FLAGS.checkpoint)
    dataset = common_flags.load_split(FLAGS.val_split)
    if len(dataset.class_names) != detector.num_classes:
        raise app.UsageError(
            f"{FLAGS.checkpoint} predicts {detector.num_classes} classes but "
            f"--dataset={FLAGS.dataset} has {len(dataset.class_names)}."
        )
    output_dir = FLAGS.output_dir or os.path.join(os.path.dirname(FLAGS.checkpoint), "eval")
    _check_outputs(output_dir, [FLAGS.checkpoint])
    results = evaluate_detector(detector, dataset, FLAGS.batch_size, FLAGS.results_json)
    print(write_report(results, output_dir))
    print(f"Wrote {output_dir}/metrics.json and metrics.md", file=sys.stderr)
    if FLAGS.results_json:
        print(f"Wrote {FLAGS.results_json} (COCO results format)", file=sys.stderr)


def _check_outputs(output_dir, inputs):
    """No output may overwrite an input."""
    written = [os.path.join(output_dir, n) for n in ("metrics.json", "metrics.md")]
    if flags.FLAGS.results_json:
        written.append(flags.FLAGS.results_json)
    for path in inputs:
        if path and any(os.path.abspath(path) == os.path.abspath(w) for w in written):
            raise app.UsageError(f"{path} is an input; the outputs may not overwrite it.")


def _score_results_json(path):
    """``--score_results_json``: the metrics of a results file, without a model."""
    FLAGS = flags.FLAGS
    if not os.path.isfile(path):
        raise app.UsageError(f"--score_results_json={path!r}: no such file.")
    if FLAGS.results_json:
        raise app.UsageError("--results_json writes a --checkpoint's detections; "
                             "--score_results_json already has them.")
    output_dir = FLAGS.output_dir or os.path.join(os.path.dirname(os.path.abspath(path)), "eval")
    _check_outputs(output_dir, [path])
    dataset = common_flags.load_split(FLAGS.val_split)
    try:
        results = score_coco_results(dataset, path, FLAGS.batch_size)
    except ValueError as error:
        raise app.UsageError(f"--score_results_json={path}: {error}") from None
    print(write_report(results, output_dir))
    print(f"Wrote {output_dir}/metrics.json and metrics.md", file=sys.stderr)
    common_flags.print_skipped_input()


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

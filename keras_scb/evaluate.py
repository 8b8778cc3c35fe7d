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

The checkpoint's label map (its stored class names, else ``labels.txt`` next to
it) must be the split's, name for name and in order; a checkpoint with neither
(older than the stored names) is checked by its class count only, with a warning.

Prints and writes (``metrics.json``, ``metrics.md``): COCO AP/AR through pycocotools
(the paper's Table 5 columns), VOC07 11-point mAP, and the recall of small / medium
/ large objects at score thresholds 0.01 / 0.1 / 0.3 (NMS 0.45 per class, top 200).
"""

import os
import sys

from absl import app, flags

from keras_scb import cli
from keras_scb import flags as common_flags


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
    flags.DEFINE_bool("overwrite", False, "Replace an existing metrics.json / --results_json "
                      "(e.g. the run's own eval/, written by the training).")
    common_flags.at_least("batch_size", 1)


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
    from keras_scb.checkpoints import check_checkpoint_classes, load_detector_checkpoint
    from keras_scb.validation import evaluate_detector, write_report

    detector = load_detector_checkpoint(FLAGS.checkpoint)
    dataset = common_flags.load_split(FLAGS.val_split)
    check_checkpoint_classes(
        FLAGS.checkpoint, detector.num_classes, dataset.class_names,
        common_flags.split_name(FLAGS.val_split),
    )
    output_dir = FLAGS.output_dir or os.path.join(os.path.dirname(FLAGS.checkpoint), "eval")
    _check_outputs(output_dir, [FLAGS.checkpoint])  # before the evaluation writes anything
    results = evaluate_detector(detector, dataset, FLAGS.batch_size, FLAGS.results_json)
    print(write_report(results, output_dir))
    print(f"Wrote {output_dir}/metrics.json and metrics.md", file=sys.stderr)
    if FLAGS.results_json:
        print(f"Wrote {FLAGS.results_json} (COCO results format)", file=sys.stderr)


def _check_outputs(output_dir, inputs):
    """The one output rule (`keras_scb.fileio.prepare_output`), before any work: no
    output is, contains or lies inside an input; nothing is replaced without
    --overwrite (a run's own eval/metrics.json included); and no output goes into
    a run folder that a live training owns (`keras_scb.run_folder.check_not_busy`)."""
    from keras_scb import run_folder
    from keras_scb.fileio import prepare_output

    FLAGS = flags.FLAGS
    inputs = [*inputs, *FLAGS.data_dir]
    run_folder.check_not_busy(output_dir)
    for name in ("metrics.json", "metrics.md"):
        prepare_output(os.path.join(output_dir, name), FLAGS.overwrite, inputs, flag="--output_dir")
    if FLAGS.results_json:
        prepare_output(FLAGS.results_json, FLAGS.overwrite, inputs, flag="--results_json")


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
    from keras_scb.validation import score_coco_results, write_report

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

"""SCB on keras-hub's RetinaNet (issue 27): focal loss with and without SCB, arms x seeds.

    python benchmarks/retinanet_experiment.py --config configs/synthetic_small.cfg \
        --seeds 0,1,2,3,4 --output runs/retinanet_synthetic

trains `keras_scb.integrations.keras_hub.ScaleBalancedRetinaNet` in three arms
(`ARMS`) that differ only in the classification weighting and the matcher:

- ``focal``: keras-hub's RetinaNet as it is (binary focal loss, its matcher at
  IoU 0.5 / 0.4, no forced match; ``weighting="uniform"``);
- ``forced_match``: the same plus the forced best-anchor match (every box gets
  its best anchor as a positive), the control that separates "every box gets an
  anchor" from the re-weighting;
- ``scb``: the forced match and SCB weights ``3 (ln M + 1) / M`` on the positives.

``--arms`` picks others of `ARMS` (``scb_unforced``: SCB on keras-hub's matcher).
The data are those of ``--config`` (its ``--dataset``, splits and synthetic
settings, read by `keras_scb.flags`; the SSD recipe's other flags are ignored),
augmented by the library's SSD augmentation and resized to ``--image_size``. The
network is keras-hub's RetinaNet on a small from-scratch ResNet (`small_backbone`:
keras-hub's ``ResNetBackbone``, one basic block per stage) under keras-hub's FPN
(P3-P7, 256 channels) and heads (``--head_convs`` convolutions before the logits;
keras-hub's default is 4); Adam with a warm-up and a cosine decay, the same recipe
for every arm, tuned on none.

Each (arm, seed) trains in this process into ``OUTPUT/ARM/seedS`` and is evaluated
on the config's validation split with the library's metrics
(`keras_scb.validation.evaluate_predictions`); a run whose ``eval/metrics.json``
exists is not redone, runs go seed by seed, and the report (``summary.md``,
``summary.json``, reliability diagrams, ``--docs``/``--docs_block``) is
`scb_experiment.report`'s: the same tables as docs/results.md.

``--match_counts`` trains nothing: it prints, for the config's training split at
``--image_size``, how many boxes have no positive anchor on keras-hub's default
anchors without and with the forced match.
"""

import argparse
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scb_experiment  # noqa: E402

from keras_scb.fileio import write_json  # noqa: E402

# Arm -> ScaleBalancedRetinaNet options.
ARMS = {
    "focal": {"weighting": "uniform", "force_best_anchor": False},
    "forced_match": {"weighting": "uniform", "force_best_anchor": True},
    "scb": {"weighting": "scb", "force_best_anchor": True},
    "scb_unforced": {"weighting": "scb", "force_best_anchor": False},
}
DEFAULT_ARMS = "focal,forced_match,scb"


def read_config(path):
    """The training and validation `Dataset` of the flagfile ``path`` (its data
    flags only)."""
    from absl import flags

    from keras_scb import flags as flags_lib

    if "dataset" not in flags.FLAGS:
        flags_lib.define_data_flags()
    flags.FLAGS(["retinanet_experiment", f"--flagfile={path}"], known_only=True)
    train = flags_lib.load_split(flags.FLAGS.train_split)
    val = flags_lib.load_split(flags.FLAGS.val_split)
    flags_lib.check_same_class_names(train, val)
    return train, val


def small_backbone(image_size):
    """keras-hub's ``RetinaNetBackbone`` (FPN P3-P7) on a from-scratch ResNet with one
    basic block per stage (64, 64, 96, 128 filters; keras-hub requires 64 at the
    stem and the first stage)."""
    import keras_hub

    shape = (image_size, image_size, 3)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64, 96, 128], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=shape)
    return keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=False, image_shape=shape)


def build_model(arm, num_classes, args):
    from keras_scb.integrations.keras_hub import ScaleBalancedRetinaNet

    return ScaleBalancedRetinaNet(
        small_backbone(args.image_size), num_classes, bounding_box_format="xyxy",
        pre_logits_num_conv_layers=args.head_convs, **ARMS[arm])


def keras_hub_targets(image_size):
    """The pipeline's padded ``(B, G, 4)`` relative boxes and ``(B, G)`` classes as
    keras-hub's ``{"boxes": xyxy pixels, "labels": float}``, padding rows -1."""
    import tensorflow as tf

    def encode(boxes, classes):
        real = tf.expand_dims(classes >= 0, -1)
        return {"boxes": tf.where(real, boxes * float(image_size), -1.0),
                "labels": tf.cast(classes, tf.float32)}

    return encode


def evaluate(model, dataset, image_size, batch_size):
    """The library's metrics of ``model``'s keras-hub decoding on ``dataset``."""
    import numpy as np

    from keras_scb.data.pipeline import validation_pipeline
    from keras_scb.evaluation import detections_from_decoder
    from keras_scb.validation import evaluate_predictions, source_ground_truths

    detections = []
    for images, info in validation_pipeline(dataset, batch_size=batch_size,
                                            image_size=image_size):
        # keras-hub's predict_on_batch fails in its decoding (0.29.1); predict works.
        out = model.predict(images, verbose=0)
        boxes = np.clip(np.asarray(out["boxes"]) / image_size, 0.0, 1.0)  # xyxy relative
        detections += detections_from_decoder(
            info["image_id"].numpy().tolist(), boxes, out["confidence"], out["labels"],
            out["num_detections"])
    return evaluate_predictions(source_ground_truths(dataset), detections, dataset,
                                image_size)


def run_one(arm, seed, train, val, args, model_dir):
    """Trains and evaluates one run unless its metrics exist (``eval/metrics.json``,
    ``wall_time.json`` as `scb_experiment.run_one` writes them)."""
    import keras

    from keras_scb.data.pipeline import training_pipeline
    from keras_scb.validation import write_report

    if os.path.exists(os.path.join(model_dir, "eval", "metrics.json")):
        return
    start, cpu_start = time.time(), time.process_time()
    keras.utils.set_random_seed(seed)
    model = build_model(arm, len(train.class_names), args)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, args.steps - args.warmup_steps, warmup_target=args.learning_rate,
        warmup_steps=args.warmup_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=10.0))
    batches = training_pipeline(train, batch_size=args.batch_size, image_size=args.image_size,
                                targets=keras_hub_targets(args.image_size), seed=seed,
                                repeat=True)
    model.fit(batches.take(args.steps), epochs=1, verbose=2)
    results = evaluate(model, val, args.image_size, args.batch_size)
    write_report(results, os.path.join(model_dir, "eval"))
    # CPU seconds too: on a shared machine the wall time measures the neighbours.
    write_json({"seconds": time.time() - start, "cpu_seconds": time.process_time() - cpu_start,
                "resumed_after_epoch": 0,
                "command": sys.argv, "arm": arm, "seed": seed},
               os.path.join(model_dir, "wall_time.json"))


def match_counts(dataset, image_size, batch_size=16):
    """``{force_best_anchor: (boxes without a positive anchor, boxes, anchors)}`` on
    keras-hub's default anchors for ``dataset`` resized to ``image_size`` (no
    augmentation)."""
    import numpy as np
    from keras import ops

    from keras_scb.data.pipeline import training_pipeline
    from keras_scb.integrations.keras_hub import label_encoder_assignment

    counts = {}
    for force in (False, True):
        args = argparse.Namespace(image_size=image_size, head_convs=0)
        model = build_model("forced_match" if force else "focal", len(dataset.class_names), args)
        data = training_pipeline(dataset, batch_size=batch_size, image_size=image_size,
                                 targets=keras_hub_targets(image_size), augment=None,
                                 shuffle=False, drop_remainder=False)
        empty = total = 0
        encoder = model.label_encoder
        for images, y in data:
            _, labels = encoder(images=images, gt_boxes=y["boxes"], gt_classes=y["labels"])
            positive = ops.convert_to_numpy(labels) > -1
            matched = ops.convert_to_numpy(label_encoder_assignment(encoder, images, y["boxes"]))
            for b, row in enumerate(y["labels"].numpy()):
                for g in np.flatnonzero(row >= 0):
                    total += 1
                    empty += not np.any(positive[b] & (matched[b] == g))
        counts[force] = (empty, total, positive.shape[1])
    return counts


def command_line(args):
    """The command that redoes the experiment of ``args`` (no --docs)."""
    words = ["python", "benchmarks/retinanet_experiment.py", "--config", args.config,
             "--arms", args.arms, "--seeds", args.seeds, "--output", args.output]
    for name in ("image_size", "batch_size", "steps", "warmup_steps", "learning_rate",
                 "head_convs"):
        words += [f"--{name}", str(getattr(args, name))]
    return shlex.join(words)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic_small.cfg")
    parser.add_argument("--arms", default=DEFAULT_ARMS,
                        help=f"Comma-separated, of {', '.join(ARMS)}; the first is the "
                             "paired baseline.")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--output", default="runs/retinanet_experiment")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--warmup_steps", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--head_convs", type=int, default=1)
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--match_counts", action="store_true",
                        help="Print the boxes without a positive anchor; train nothing.")
    parser.add_argument("--docs", metavar="FILE")
    parser.add_argument("--docs_block", metavar="NAME")
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; expected of {list(ARMS)}.")
    if args.warmup_steps >= args.steps:
        parser.error(f"--warmup_steps ({args.warmup_steps}) must be < --steps ({args.steps}).")
    if (args.docs is None) != (args.docs_block is None):
        parser.error("--docs and --docs_block go together.")
    if args.docs is not None:
        try:  # before the training, not after
            scb_experiment.docs_text(args.docs, args.docs_block, "")
        except ValueError as error:
            parser.error(str(error))
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.match_counts or not args.report_only:
        try:
            train, val = read_config(args.config)
        except ValueError as error:
            parser.error(f"--config {args.config}: {error}")
    if args.match_counts:
        for force, (empty, total, anchors) in match_counts(train, args.image_size).items():
            print(f"force_best_anchor={force}: {empty} of {total} boxes "
                  f"({100 * empty / total:.1f} %) without a positive anchor "
                  f"({anchors} anchors at {args.image_size} x {args.image_size})")
        return
    if not args.report_only:
        for seed in seeds:  # seed-major: an interrupted experiment has whole pairs
            for arm in arms:
                run_one(arm, seed, train, val, args,
                        scb_experiment.run_dir(args.output, arm, seed, 0))
    meta = {"config": args.config, "arms": {a: ARMS[a] for a in arms}, "seeds": args.seeds,
            "runs_per_seed": 1, "command": command_line(args)}
    docs = None if args.docs is None else (args.docs, args.docs_block, command_line(args))
    try:
        scb_experiment.report(args.output, arms, seeds, 1, arms[0], meta, docs)
    except (ValueError, OSError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()

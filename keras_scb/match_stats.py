"""How many anchors each object matches: the paper's Fig. 1 and Fig. 3.

For every ground-truth object ``i`` of a dataset split, ``M_i`` is the number of
anchors whose matched box is ``i`` under `keras_scb.matching.encode_targets` (the
count that the scale-balanced loss weights by). The statistics are reported for the
annotated images and, optionally, for random augmented samples of them, overall
and per object scale (COCO's limits, see `size_reference`).

    python -m keras_scb.match_stats --dataset=bccd --split=train \\
        --anchors=ssd300 --augment_samples=4 --output_dir=runs/match_stats

writes ``match_stats.json`` and two PNG plots into ``--output_dir``.
"""

import os

import numpy as np

from keras_scb.evaluation import SCALES, scale_of_area
from keras_scb.matching import MATCH_IOU, pixel_box_areas
from keras_scb.fileio import atomic_write, prepare_output, write_json


def match_counts_per_box(boxes, classes, anchors, iou_threshold=MATCH_IOU):
    """``M_i`` of every box: how many anchors it matches, in TensorFlow (usable
    inside ``tf.data`` maps). The loss's per-anchor view of the same count is
    `keras_scb.losses.match_count_per_anchor`.

    Args:
        boxes: float ``(B, G, 4)`` (or ``(G, 4)``) relative ``[xmin, ymin, xmax, ymax]``.
        classes: int ``(B, G)`` (or ``(G,)``), ``-1`` for padding rows (they count 0).
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.
        iou_threshold: the matching threshold of `encode_targets`.

    Returns:
        int32 tensor shaped like ``classes``: how many anchors matched each box.
        Can be 0 when two boxes share their best anchor and the later one takes it.
    """
    import tensorflow as tf

    from keras_scb.matching import encode_targets

    classes = tf.convert_to_tensor(classes)
    targets = encode_targets(boxes, classes, anchors, iou_threshold=iou_threshold)
    # Shift by one so that background (-1) lands in bin 0, which is then dropped.
    bins = tf.cast(targets[..., 5], tf.int32) + 1
    num_boxes = tf.shape(classes)[-1] + 1
    counts = tf.math.bincount(
        bins, minlength=num_boxes, maxlength=num_boxes, axis=-1, dtype=tf.int32
    )
    return counts[..., 1:]


def image_match_counts(boxes, classes, anchors, iou_threshold=MATCH_IOU):
    """`match_counts_per_box` of one image, as numpy.

    Args:
        boxes: float ``(N, 4)`` relative ``[xmin, ymin, xmax, ymax]``.
        classes: int ``(N,)``, ``-1`` for padding rows.
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.

    Returns:
        int64 ``(N,)``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes, np.int32).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    counts = match_counts_per_box(boxes, classes, anchors, iou_threshold)
    return np.asarray(counts, np.int64)


def count_summary(counts):
    """Statistics of ``(N,)`` anchor counts: ``num_objects, mean, median, min, max,
    fraction_zero, fraction_at_most_1``, ``histogram`` (list, index = M_i) and
    ``scb_weight_per_anchor``; numbers are None for an empty array.

    ``scb_weight_per_anchor`` is the mean SCB weight (the paper's alpha 1, beta 3)
    of these objects' positive anchors, ``sum_i M_i W_i / sum_i M_i``. Hard negative
    mining weights every negative 1, so this mean sets how far SCB moves the scores
    up against plain MultiBox (weight 1); None if no object matched an anchor.
    """
    from keras import ops

    from keras_scb.losses import scale_balanced_weights

    counts = np.asarray(counts, np.int64)
    if len(counts) == 0:
        keys = ("mean", "median", "min", "max", "fraction_zero", "fraction_at_most_1",
                "scb_weight_per_anchor")
        return {"num_objects": 0, **{k: None for k in keys}, "histogram": []}
    matched = counts[counts > 0]
    weights = ops.convert_to_numpy(scale_balanced_weights(matched))
    return {
        "num_objects": int(len(counts)),
        "mean": float(counts.mean()),
        "median": float(np.median(counts)),
        "min": int(counts.min()),
        "max": int(counts.max()),
        "fraction_zero": float(np.mean(counts == 0)),
        "fraction_at_most_1": float(np.mean(counts <= 1)),
        "histogram": np.bincount(counts).tolist(),
        "scb_weight_per_anchor": (float(np.sum(matched * weights) / np.sum(matched))
                                  if len(matched) else None),
    }


def match_statistics(counts, scales):
    """`count_summary` of all objects and of each scale.

    Args:
        counts: int ``(N,)`` ``M_i``.
        scales: int ``(N,)`` indices into `SCALES`.

    Returns:
        ``{"all": summary, "small": summary, "medium": ..., "large": ...}``.
    """
    counts, scales = np.asarray(counts), np.asarray(scales)
    stats = {"all": count_summary(counts)}
    for s, name in enumerate(SCALES):
        stats[name] = count_summary(counts[scales == s])
    return stats


def object_scales(boxes, height, width):
    """Scale index (into `SCALES`) of relative boxes ``(N, 4)`` in a ``height x
    width`` pixel image, by the evaluation's rule (32x32 px medium, 96x96 large)."""
    return scale_of_area(pixel_box_areas(boxes, height, width))


def _histogram_axes(ax, counts_by_stage, title):
    top = max((int(c.max()) for c in counts_by_stage.values() if len(c)), default=0)
    bins = np.arange(top + 2) - 0.5
    for stage, counts in counts_by_stage.items():
        if len(counts):
            ax.hist(
                counts, bins=bins, alpha=0.6, density=True,
                label=f"{stage} (n={len(counts)}, mean={counts.mean():.2f})",
            )
    ax.set_title(title)
    ax.set_xlabel("matched anchors per object $M_i$")
    ax.set_ylabel("fraction of objects")
    ax.legend(fontsize="small")


def plot_counts(counts_by_stage, scales_by_stage, output_dir, label=""):
    """Writes ``matched_anchors_hist.png`` (Fig. 1: all objects) and
    ``matched_anchors_by_scale.png`` (Fig. 3: one panel per scale).

    Args:
        counts_by_stage: ``{stage name: (N,) M_i}``, e.g. before / after augmentation.
        scales_by_stage: ``{stage name: (N,) scale indices}``, same keys.
        output_dir: existing directory.
        label: prefix of the plot titles (dataset, anchors).

    Returns:
        The two paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    counts_by_stage = {k: np.asarray(v) for k, v in counts_by_stage.items()}
    fig, ax = plt.subplots(figsize=(7, 4))
    _histogram_axes(ax, counts_by_stage, f"{label} all objects".strip())
    hist_path = os.path.join(output_dir, "matched_anchors_hist.png")
    fig.tight_layout()
    atomic_write(hist_path, lambda path: fig.savefig(path, dpi=100))
    plt.close(fig)

    fig, axes = plt.subplots(1, len(SCALES), figsize=(5 * len(SCALES), 4))
    for s, (ax, name) in enumerate(zip(axes, SCALES)):
        _histogram_axes(
            ax,
            {k: c[np.asarray(scales_by_stage[k]) == s] for k, c in counts_by_stage.items()},
            f"{label} {name} objects".strip(),
        )
    scale_path = os.path.join(output_dir, "matched_anchors_by_scale.png")
    fig.tight_layout()
    atomic_write(scale_path, lambda path: fig.savefig(path, dpi=100))
    plt.close(fig)
    return hist_path, scale_path


# What match_stats writes into --output_dir.
OUTPUTS = ("match_stats.json", "matched_anchors_hist.png", "matched_anchors_by_scale.png")


def write_report(report, output_dir):
    """Writes the statistics dict as ``match_stats.json``; returns its path."""
    path = os.path.join(output_dir, "match_stats.json")
    write_json(report, path)
    return path


def annotated_counts(dataset, anchors, iou_threshold=MATCH_IOU):
    """``M_i`` of every non-difficult object of the annotated images.

    Args:
        dataset: `keras_scb.data.records.Dataset`.
        anchors: preset name or `AnchorSpec`.

    Returns:
        ``(counts, input_scales, original_scales)``, each ``(N,)`` int over all
        objects: the scale measured on the network input (the image resized to
        ``S x S``) and on the original image.
    """
    from keras_scb.anchors import get_anchor_spec, get_anchors

    size = get_anchor_spec(anchors).image_size
    priors = get_anchors(anchors)
    counts, input_scales, original_scales = [], [], []
    for record in dataset.records:
        # Difficult / crowd boxes are not training targets, so they match nothing.
        boxes = record.boxes[~record.difficult]
        classes = record.classes[~record.difficult]
        counts.append(image_match_counts(boxes, classes, priors, iou_threshold))
        input_scales.append(object_scales(boxes, size, size))
        original_scales.append(object_scales(boxes, record.height, record.width))
    return tuple(
        np.concatenate(parts) if parts else np.zeros(0, np.int64)
        for parts in (counts, input_scales, original_scales)
    )


def augmented_counts(
    dataset, anchors, samples_per_image, seed=0, batch_size=32, iou_threshold=MATCH_IOU
):
    """``M_i`` of the objects of random training samples (SSD augmentation).

    The samples come from `keras_scb.data.training_pipeline` with its default
    `AugmentConfig` (difficult boxes dropped, as in training), in dataset order,
    ``samples_per_image`` passes over the dataset.

    Returns:
        ``(counts, input_scales)``, each ``(N,)`` int, scales measured on the
        ``S x S`` network input.
    """
    import tensorflow as tf

    from keras_scb.anchors import get_anchor_spec, get_anchors
    from keras_scb.data import training_pipeline

    size = get_anchor_spec(anchors).image_size
    priors = tf.constant(get_anchors(anchors))

    def targets(boxes, classes):
        counts = match_counts_per_box(boxes, classes, priors, iou_threshold)
        return {"boxes": boxes, "classes": classes, "counts": counts}

    wanted = len(dataset) * samples_per_image
    batches = training_pipeline(
        dataset, anchors, batch_size=batch_size, targets=targets, seed=seed,
        shuffle=False, repeat=True, drop_remainder=True,
    )
    counts, scales, seen = [], [], 0
    for _, batch in batches:
        batch = {k: v.numpy()[: wanted - seen] for k, v in batch.items()}
        real = batch["classes"] >= 0  # padding rows have class -1
        counts.append(batch["counts"][real])
        scales.append(object_scales(batch["boxes"][real], size, size))
        seen += len(batch["classes"])
        if seen >= wanted:
            break
    return (
        np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64),
        np.concatenate(scales) if scales else np.zeros(0, np.int64),
    )


def _define_flags():
    from absl import flags

    from keras_scb import flags as common_flags

    common_flags.define_data_flags()
    flags.DEFINE_string("anchors", "ssd300", "Anchor preset (keras_scb.anchors.PRESETS).")
    flags.DEFINE_integer("augment_samples", 4,
                         "Augmented samples drawn per image (0: annotated images only).")
    flags.DEFINE_integer("max_images", 0, "Use only the first N images of the split (0: all).")
    flags.DEFINE_integer("batch_size", 32, "Images per batch of the augmentation pipeline.")
    flags.DEFINE_integer("seed", 0, "Seed of the augmentation.")
    flags.DEFINE_float("iou_threshold", MATCH_IOU, "Anchor matching IoU threshold.")
    flags.DEFINE_string("output_dir", None, "Where match_stats.json and the plots go.")
    flags.DEFINE_bool("overwrite", False, "Replace the files of an earlier run in --output_dir.")
    flags.mark_flag_as_required("output_dir")
    for name in ("augment_samples", "max_images", "seed"):
        common_flags.at_least(name, 0)
    common_flags.at_least("batch_size", 1)
    common_flags.between("iou_threshold", 0, 1, open_low=True)


def main(argv):
    import dataclasses

    from absl import app, flags, logging

    from keras_scb import flags as common_flags
    from keras_scb.anchors import get_anchor_spec, get_anchors

    del argv
    FLAGS = flags.FLAGS
    try:
        get_anchor_spec(FLAGS.anchors)
    except ValueError as error:
        raise app.UsageError(f"--anchors: {error}") from None
    for name in OUTPUTS:  # the one output rule, before any work
        prepare_output(os.path.join(FLAGS.output_dir, name), FLAGS.overwrite, FLAGS.data_dir,
                       flag="--output_dir")
    dataset = common_flags.load_split(FLAGS.train_split)
    if FLAGS.max_images:
        dataset = dataclasses.replace(dataset, records=dataset.records[: FLAGS.max_images])

    counts, input_scales, original_scales = annotated_counts(
        dataset, FLAGS.anchors, FLAGS.iou_threshold
    )
    stages = {"annotated": match_statistics(counts, input_scales)}
    stages["annotated"]["by_original_image_scale"] = match_statistics(
        counts, original_scales
    )
    counts_by_stage = {"annotated": counts}
    scales_by_stage = {"annotated": input_scales}
    if FLAGS.augment_samples:
        aug_counts, aug_scales = augmented_counts(
            dataset, FLAGS.anchors, FLAGS.augment_samples, FLAGS.seed,
            FLAGS.batch_size, FLAGS.iou_threshold,
        )
        stages["augmented"] = match_statistics(aug_counts, aug_scales)
        counts_by_stage["augmented"] = aug_counts
        scales_by_stage["augmented"] = aug_scales
    report = {
        "dataset": FLAGS.dataset,
        "split": FLAGS.train_split,
        "num_images": len(dataset),
        "anchors": FLAGS.anchors,
        "num_anchors": int(len(get_anchors(FLAGS.anchors))),
        "iou_threshold": FLAGS.iou_threshold,
        "augment_samples": FLAGS.augment_samples,
        "seed": FLAGS.seed,
        "scale_note": (
            "small / medium / large: COCO limits (32^2, 96^2 px) on the box area at "
            "the network input (S x S); 'by_original_image_scale' uses the "
            "original image size instead. Difficult / crowd boxes are left out."
        ),
        "stages": stages,
    }
    json_path = write_report(report, FLAGS.output_dir)
    label = f"{FLAGS.dataset} {','.join(FLAGS.train_split)}, {FLAGS.anchors}:"
    plots = plot_counts(counts_by_stage, scales_by_stage, FLAGS.output_dir, label)
    for stage, stats in stages.items():
        means = ", ".join(
            f"{s} {stats[s]['mean']:.2f} (n={stats[s]['num_objects']})"
            for s in SCALES if stats[s]["num_objects"]
        )
        print(f"{stage}: mean M_i {stats['all']['mean']:.2f} over "
              f"{stats['all']['num_objects']} objects; {means}; "
              f"M_i <= 1: {100 * stats['all']['fraction_at_most_1']:.1f}%; mean SCB weight "
              f"of a positive anchor {stats['all']['scb_weight_per_anchor']:.2f}")
    logging.info("Wrote %s, %s", json_path, ", ".join(plots))


if __name__ == "__main__":
    from keras_scb import cli

    _define_flags()
    cli.run(main)

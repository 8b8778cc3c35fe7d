"""absl flags shared by the command-line tools, and the objects they select.

`keras_scb.train`, `keras_scb.evaluate` and `keras_scb.match_stats` all read a
dataset and build a detector the same way; the flags and their validation live here
once. Errors name the flag and the bad value.
"""

import math
import os
import sys
from typing import Callable

from absl import flags

DATASETS = ("bccd", "voc", "coco", "tfrecord", "synthetic")


# Every numeric flag of every tool has a declared range, checked by absl when
# the command line is parsed (and on assignment): a bad value is a one-line
# error ``flag --NAME=VALUE: must be ...`` before anything runs. Unset (None)
# optional flags pass.
def require(name: str, check: Callable[[object], bool], requirement: str) -> None:
    """Registers an absl validator of ``--name``: ``check(value)`` must hold."""

    def valid(value):
        try:
            return value is None or bool(check(value))
        except (TypeError, ValueError):
            return False

    flags.register_validator(name, valid, message=f"must be {requirement}")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def at_least(name: str, low: float) -> None:
    """``--name >= low`` (a finite number)."""
    require(name, lambda v: _number(v) and v >= low, f">= {low}")


def above(name: str, low: float) -> None:
    """``--name > low`` (a finite number)."""
    require(name, lambda v: _number(v) and v > low, f"> {low}")


def between(name: str, low: float, high: float, open_low: bool = False,
            open_high: bool = False) -> None:
    """``low <= --name <= high``, a bound excluded when ``open_low``/``open_high``."""
    def check(v):
        return (_number(v) and (v > low if open_low else v >= low)
                and (v < high if open_high else v <= high))

    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    require(name, check, f"in {interval}")


def whole_numbers(name: str, low: int = 0, increasing: bool = False) -> None:
    """A list flag of whole numbers ``>= low``, strictly increasing if ``increasing``."""
    def check(values):
        numbers = [int(v) for v in values]  # "abc" -> ValueError -> invalid
        if any(str(n) != str(v).strip() for n, v in zip(numbers, values)):
            return False  # "1.5", "1e3"
        return all(n >= low for n in numbers) and (
            not increasing or all(a < b for a, b in zip(numbers, numbers[1:])))

    order = ", increasing" if increasing else ""
    require(name, check, f"a comma-separated list of whole numbers >= {low}{order}")


def define_data_flags():
    flags.DEFINE_enum("dataset", "bccd", DATASETS,
                      "Data source. 'bccd' is the vendored BCCD (VOC format), the offline default.")
    flags.DEFINE_list("data_dir", [],
                      "voc: VOCdevkit year folders (comma-separated, e.g. VOC2007,VOC2012); "
                      "coco: the dataset root holding annotations/ and <split>/; "
                      "tfrecord: the folder of shards written by keras_scb.data.convert. "
                      "Ignored for bccd and synthetic.")
    flags.DEFINE_list("train_split", ["train"],
                      "Training split(s), e.g. trainval or train2017. voc: a plain name is "
                      "read from every --data_dir folder, <folder>/<split> from that folder "
                      "only (VOC07+12: VOC2007/trainval,VOC2012/trainval).")
    flags.DEFINE_string("val_split", "test",
                        "Evaluation split, e.g. val2017; voc as --train_split (VOC07 test: "
                        "VOC2007/test, since VOC2012 has no public test split).")
    flags.DEFINE_integer("synthetic_images", 256, "Images of the synthetic dataset's training split.")
    flags.DEFINE_float("synthetic_small_fraction", None,
                       "Synthetic data: probability that an object is under 32x32 px on the "
                       "300x300 image (= a 300 px network input); default: sizes log-uniform.")
    flags.DEFINE_integer("synthetic_clutter", 0,
                         "Synthetic data: up to this many distractor crosses (not objects) per image.")
    flags.DEFINE_enum("bad_input", "raise", ["raise", "skip"],
                      "On a corrupt image or annotation: stop with an error naming the file, "
                      "or skip it and count it (the counts are printed at the end).")
    flags.DEFINE_list("class_names", [],
                      "The label map, class names in id order, for every split. voc: default "
                      "<data_dir>/labels.txt if present, else the sorted names in all the "
                      "annotation files; other datasets: checked against the dataset's names.")
    at_least("synthetic_images", 1)
    between("synthetic_small_fraction", 0, 1)
    at_least("synthetic_clutter", 0)


def define_model_flags():
    flags.DEFINE_string("model", "mobilenetv2-ssdlite300",
                        "Detector name; see keras_scb.models.available_detectors().")
    flags.DEFINE_integer("num_classes", 0,
                         "Foreground classes. 0 takes the dataset's; any other value must equal it.")
    flags.DEFINE_string("backbone_weights", None,
                        "Unset: the model's default (vendored ImageNet weights for "
                        "MobileNetV2 1.0, random otherwise). 'imagenet': Keras's ImageNet "
                        "file from its cache ~/.keras/models/ ($KERAS_HOME/models/), "
                        "downloaded there when online; offline without it the run stops "
                        "before reading data, naming the file. VGG16 detectors (SSD, FSSD, "
                        "RefineDet) load conv1_1..conv5_3 and fc6/fc7 subsampled from fc1/fc2 "
                        "(vgg16_weights_tf_dim_ordering_tf_kernels.h5, the with-top file); "
                        "DSSD loads ResNet-101 (resnet101_weights_tf_dim_ordering_tf_kernels"
                        "_notop.h5). A path: that file (the same Keras file, or a .weights.h5 "
                        "of the keras.applications model). 'none': random.")
    flags.DEFINE_float("width_multiplier", None, "MobileNetV2 width multiplier of SSDLite models.")
    flags.DEFINE_float("bn_momentum", None, "BatchNorm momentum of models that take it.")
    flags.DEFINE_string("anchors", None, "Anchor preset overriding the model's default "
                        "(e.g. ssd300_coco); see keras_scb.anchors.PRESETS.")
    at_least("num_classes", 0)
    above("width_multiplier", 0)
    between("bn_momentum", 0, 1, open_high=True)


FLAGS = flags.FLAGS


def model_kwargs():
    """Builder keyword arguments for the flags that were set."""
    kwargs = {}
    if FLAGS.backbone_weights is not None:
        kwargs["backbone_weights"] = (
            None if FLAGS.backbone_weights.lower() == "none" else FLAGS.backbone_weights
        )
    if FLAGS.width_multiplier is not None:
        kwargs["width_multiplier"] = FLAGS.width_multiplier
    if FLAGS.bn_momentum is not None:
        kwargs["bn_momentum"] = FLAGS.bn_momentum
    if FLAGS.anchors is not None:
        kwargs["anchors"] = FLAGS.anchors
    return kwargs


def check_backbone_weights():
    """Fails before any data is read if --backbone_weights cannot be loaded
    (a missing file; 'imagenet' offline without Keras's cached file)."""
    from keras_scb.models.backbones import check_backbone_weights as check

    check(FLAGS.model, model_kwargs().get("backbone_weights"))


def check_model_name():
    from keras_scb.models import available_detectors

    if FLAGS.model not in available_detectors():
        raise ValueError(
            f"--model={FLAGS.model!r} is not a detector; available: {available_detectors()}."
        )


def _require_dirs():
    if not FLAGS.data_dir:
        raise ValueError(f"--data_dir is required with --dataset={FLAGS.dataset}.")
    for path in FLAGS.data_dir:
        if not os.path.isdir(path):
            raise ValueError(f"--data_dir: {path!r} is not a directory.")
    return FLAGS.data_dir


# (what was read, its issues) of every split read in this process, for
# `print_skipped_input` at the end of a run.
_ISSUES = []


def load_split(splits):
    """Reads one split (or several, joined) of the flag-selected dataset.

    Every split of a dataset has the same ``class_names`` (the label map, id
    order): ``--class_names`` if set, else the dataset's own (see
    `keras_scb.data.voc.dataset_class_names` for VOC).

    Returns:
        A `keras_scb.data.records.Dataset`, or a `TFRecordSource` for
        ``--dataset=tfrecord``; both go into `keras_scb.data.pipeline` and both
        have ``class_names``.
    """
    from keras_scb import label_map

    source = _read_split([splits] if isinstance(splits, str) else list(splits))
    if FLAGS.class_names:
        label_map.check_same(source.class_names, FLAGS.class_names, split_name(splits),
                             f"--class_names={','.join(FLAGS.class_names)}")
    issues = getattr(source, "issues", None)
    if issues:
        _ISSUES.append((f"--dataset={FLAGS.dataset} {splits}", issues))
    return source


def split_name(splits) -> str:
    """``--dataset=NAME split SPLIT``: how errors name a split of the flags' dataset."""
    splits = [splits] if isinstance(splits, str) else list(splits)
    return f"--dataset={FLAGS.dataset} split {','.join(splits)}"


def check_same_class_names(train, val):
    """The ``--train_split`` and ``--val_split`` sources (``Dataset`` or
    ``TFRecordSource``) must share the label map."""
    from keras_scb import label_map

    label_map.check_same(train.class_names, val.class_names,
                         split_name(FLAGS.train_split), split_name(FLAGS.val_split))


def print_skipped_input(file=None):
    """Prints the counts of input skipped or clipped by the splits read so far."""
    from keras_scb.data import records

    for split, issues in _ISSUES:
        print(f"{split}: {records.format_issues(issues)}", file=file or sys.stderr)


def _read_split(splits):
    from keras_scb.data import coco, synthetic, tfrecord, vendored, voc

    policy = dict(bad_files=FLAGS.bad_input, bad_objects=FLAGS.bad_input)
    if FLAGS.dataset == "bccd":
        return vendored.load_bccd(splits, **policy)
    if FLAGS.dataset == "voc":
        roots = _require_dirs()
        class_names = FLAGS.class_names or voc.dataset_class_names(roots)
        return voc.read_voc(roots, splits, class_names, **policy)
    if FLAGS.dataset == "synthetic":
        # Training splits and evaluation splits come from different seeds.
        train = splits[0].startswith("train")
        return synthetic.make_synthetic(
            FLAGS.synthetic_images if train else max(1, FLAGS.synthetic_images // 4),
            seed=0 if train else 1,
            small_fraction=FLAGS.synthetic_small_fraction,
            clutter=(0, FLAGS.synthetic_clutter),
        )
    if len(splits) != 1:
        raise ValueError(f"--dataset={FLAGS.dataset} takes one split; got {splits}.")
    root = _require_dirs()[0]
    if FLAGS.dataset == "tfrecord":
        metadata = os.path.join(root, f"{splits[0]}.json")
        if not os.path.exists(metadata):
            raise ValueError(
                f"--data_dir={root}: no {splits[0]}.json; write it with "
                "python -m keras_scb.data.convert."
            )
        return tfrecord.read_tfrecords(metadata)
    return coco.read_coco(
        os.path.join(root, "annotations", f"instances_{splits[0]}.json"),
        os.path.join(root, splits[0]),
        **policy,
    )


def num_images(source):
    """Images in a `Dataset` or `TFRecordSource`."""
    return getattr(source, "num_records", None) or len(source)

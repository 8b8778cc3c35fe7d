"""The training recipe as one typed value: `TrainConfig` and its sections.

`keras_scb.train.train(config)` runs the recipe that a `TrainConfig` describes;
``python -m keras_scb.train`` only turns its flags into one. Every setting is a
field of one section and a flag of the same name (``--epochs`` is
``config.schedule.epochs``); the flags are defined from the fields
(`define_flags`: type, default, choices and help), so the two vocabularies cannot
drift. The sections are frozen dataclasses:

- `DataConfig` (``data``): the dataset and its splits, bad-input policy, label map,
  and what the input pipeline does (``augment``, ``keep_difficult``, ``max_boxes``);
- `ModelConfig` (``model``): the registry name and the builder's options;
- `LossConfig` (``loss``), `OptimizerConfig` (``optimizer``), `ScheduleConfig`
  (``schedule``: batch, steps, epochs and the learning-rate schedule);
- `keras_scb.data.augment.AugmentConfig` (``augmentation``), used when
  ``data.augment`` is on; its fields ``expand_prob`` and ``max_expand`` are flags;
- `RuntimeConfig` (``runtime``): the output folder, seed, numerics, distribution,
  evaluation and logging.

A config checks itself when it is made: a bad value raises `ValueError` in one
line that names the field by its flag (``--batch_size must be positive; got 0.``),
which the command line prints as it is. What needs the dataset (the count of
``--class_weights``, ``--num_classes``) is checked by `TrainConfig.check_classes`
once it is read; what needs files (``--backbone_weights``, the data folders) when
they are used.

Round trips: `TrainConfig.from_flagfile` / `to_flagfile` (absl's flagfile syntax,
parsed by absl itself, so every flagfile of ``configs/`` reads as the command line
reads it), `from_flag_values` / `to_flag_values` (flag name -> value: a run's
``flags.json``), `from_json` / `to_json` (the sections nested).
"""

import dataclasses
import math
import os
import typing
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from absl import flags

from keras_scb import label_map
from keras_scb.data.augment import AugmentConfig
from keras_scb.fileio import read_text, write_json, write_text
from keras_scb.output_layout import REFINEDET

DATASETS = ("bccd", "coco_subset", "voc", "coco", "tfrecord", "synthetic")
LOSSES = ("multibox", "scb", "refinedet")
WEIGHTINGS = ("uniform", "inverse_log", "inverse_sqrt", "inverse", "scb", "uniform_beta",
              "scb_mean_normalised")
STRATEGIES = ("default", "mirrored", "multi_worker", "data_parallel")


@dataclasses.dataclass(frozen=True)
class Range:
    """The finite numbers a numeric setting takes (each item of a list setting).

    Checked twice from this one declaration: when a section is made (a Python
    user's `ValueError`) and by an absl validator of its flag (the command line's
    one-line error, before anything runs).
    """

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    increasing: bool = False  # a list: strictly increasing

    def holds(self, value: Any) -> bool:
        items = value if isinstance(value, tuple) else (value,)
        inside = all(
            math.isfinite(v) and (v > self.low if self.open_low else v >= self.low)
            and (v < self.high if self.open_high else v <= self.high) for v in items)
        return inside and (not self.increasing or all(a < b for a, b in zip(items, items[1:])))

    def __str__(self) -> str:
        if self.high == math.inf:
            # An integer >= 1 is positive too; the messages say so.
            text = ("positive" if (self.low, self.open_low) in ((0, True), (1, False))
                    else f"{'>' if self.open_low else '>='} {self.low:g}")
        else:
            text = (f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.open_high else ']'}")
        return text + (", increasing" if self.increasing else "")


POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1)
BELOW_ONE = Range(0, 1, open_high=True)


def setting(default: Any, help: str, choices: Tuple[str, ...] = (),
            train_only: bool = False, valid: Optional[Range] = None) -> Any:
    """A section field that is also a flag: its help, its allowed values (``choices``
    or the numbers of ``valid``), and whether only ``keras_scb.train`` has it
    (``evaluate`` shares the other data flags)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "train_only": train_only, "range": valid})


class _Section:
    """Base of the sections: on creation every field is converted to its type
    (a list to a tuple, ``"1,2"`` to ``(1, 2)``, an int to a float) and checked
    against its choices; then the section's own `_check` runs."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _coerce(field.name, hints[field.name], getattr(self, field.name))
            choices = field.metadata["choices"]
            if choices and value not in choices:
                raise ValueError(f"--{field.name} must be one of {', '.join(choices)}; "
                                 f"got {value!r}.")
            valid = field.metadata.get("range")
            if valid is not None and value is not None and not valid.holds(value):
                shown = _joined(value) if isinstance(value, tuple) else repr(value)
                raise ValueError(f"--{field.name} must be {valid}; got {shown}.")
            object.__setattr__(self, field.name, value)
        self._check()

    def _check(self) -> None:
        pass


_NOUNS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {float: "numbers", int: "integers", str: "names"}


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` of the field ``name``; `ValueError` naming it."""
    if typing.get_origin(hint) is Union:  # Optional[X]
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is tuple:
        element = typing.get_args(hint)[0]
        items = ([] if not value else value.split(",")) if isinstance(value, str) else value
        try:
            return tuple(_scalar(element, item) for item in items)
        except (TypeError, ValueError):
            raise ValueError(
                f"--{name}={_joined(value)}: not a list of {_PLURALS[element]}.") from None
    try:
        return _scalar(hint, value)
    except (TypeError, ValueError):
        raise ValueError(f"--{name} must be {_NOUNS[hint]}; got {value!r}.") from None


def _scalar(kind: type, value: Any) -> Any:
    # bool is an int in Python; a flag of one is never the other.
    if isinstance(value, bool) != (kind is bool):
        raise TypeError(value)
    if kind is str and not isinstance(value, str):
        raise TypeError(value)
    if kind is int and isinstance(value, float):
        raise TypeError(value)
    return kind(value)


def _joined(value: Any) -> str:
    """A list setting as its flag spells it: ``1,2.5`` (a whole float without ``.0``)."""
    if isinstance(value, str):
        return value
    return ",".join(str(v).removesuffix(".0") if isinstance(v, float) else str(v) for v in value)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """The dataset, its splits and what the training input pipeline does with them."""

    dataset: str = setting("bccd", "Data source. 'bccd' is the vendored BCCD (VOC format), "
                           "the offline default; 'coco_subset' the vendored COCO val2017 "
                           "subset.", choices=DATASETS)
    data_dir: Tuple[str, ...] = setting(
        (), "voc: VOCdevkit year folders (comma-separated, e.g. VOC2007,VOC2012); "
        "coco: the dataset root holding annotations/ and <split>/; "
        "tfrecord: the folder of shards written by keras_scb.data.convert. "
        "Ignored for bccd and synthetic.")
    train_split: Tuple[str, ...] = setting(
        ("train",), "Training split(s), e.g. trainval or train2017. voc: a plain name is "
        "read from every --data_dir folder, <folder>/<split> from that folder "
        "only (VOC07+12: VOC2007/trainval,VOC2012/trainval).")
    val_split: str = setting("test", "Evaluation split, e.g. val2017; voc as --train_split "
                             "(VOC07 test: VOC2007/test, since VOC2012 has no public test split).")
    synthetic_images: int = setting(256, "Images of the synthetic dataset's training split.",
                                    valid=AT_LEAST_ONE)
    synthetic_small_fraction: Optional[float] = setting(
        None, "Synthetic data: probability that an object is under 32x32 px on the "
        "300x300 image (= a 300 px network input); default: sizes log-uniform.", valid=FRACTION)
    synthetic_clutter: int = setting(
        0, "Synthetic data: up to this many distractor crosses (not objects) per image.",
        valid=NON_NEGATIVE)
    bad_input: str = setting("raise", "On a corrupt image or annotation: stop with an error "
                             "naming the file, or skip it and count it (the counts are "
                             "printed at the end).", choices=("raise", "skip"))
    class_names: Tuple[str, ...] = setting(
        (), "The label map, class names in id order, for every split. voc: default "
        "<data_dir>/labels.txt if present, else the sorted names in all the "
        "annotation files; other datasets: checked against the dataset's names.")
    augment: bool = setting(True, "SSD data augmentation (its settings: --expand_prob, "
                            "--max_expand).", train_only=True)
    keep_difficult: bool = setting(
        False, "Train on VOC 'difficult' (COCO crowd) boxes too, as Caffe SSD/RefineDet "
        "(use_difficult_gt) and PytorchSSD do; ssd.pytorch drops them (the default). "
        "Evaluation ignores them either way.", train_only=True)
    max_boxes: int = setting(
        0, "Boxes per image kept by the input pipeline where it pads the ground truth "
        "(--match_on=device, RefineDet); 0: the training split's most boxes on one image, "
        "so none is dropped. A smaller value drops boxes, with a warning that counts them.",
        train_only=True, valid=NON_NEGATIVE)

    def split_name(self, splits: Union[str, Sequence[str]]) -> str:
        """``--dataset=NAME split SPLIT``: how errors name a split of this dataset."""
        splits = [splits] if isinstance(splits, str) else splits
        return f"--dataset={self.dataset} split {_joined(splits)}"

    def read_split(self, splits: Union[str, Sequence[str]]) -> Any:
        """Reads one split (or several, joined) of this dataset.

        Every split has the same ``class_names`` (the label map, id order):
        ``--class_names`` if set, else the dataset's own (see
        `keras_scb.data.voc.dataset_class_names` for VOC).

        Returns:
            A `keras_scb.data.records.Dataset` (its ``issues`` count what was
            skipped), or a `TFRecordSource` for ``--dataset=tfrecord``; both go into
            `keras_scb.data.pipeline` and both have ``class_names``.
        """
        source = self._read([splits] if isinstance(splits, str) else list(splits))
        if self.class_names:
            label_map.check_same(source.class_names, self.class_names, self.split_name(splits),
                                 f"--class_names={','.join(self.class_names)}")
        return source

    def check_same_class_names(self, train: Any, val: Any) -> None:
        """The ``--train_split`` and ``--val_split`` sources must share the label map."""
        label_map.check_same(train.class_names, val.class_names,
                             self.split_name(self.train_split), self.split_name(self.val_split))

    def _folders(self) -> Tuple[str, ...]:
        if not self.data_dir:
            raise ValueError(f"--data_dir is required with --dataset={self.dataset}.")
        for path in self.data_dir:
            if not os.path.isdir(path):
                raise ValueError(f"--data_dir: {path!r} is not a directory.")
        return self.data_dir

    def _read(self, splits: list) -> Any:
        from keras_scb.data import coco, synthetic, tfrecord, vendored, voc

        policy = dict(bad_files=self.bad_input, bad_objects=self.bad_input)
        if self.dataset == "bccd":
            return vendored.load_bccd(splits, **policy)
        if self.dataset == "voc":
            roots = list(self._folders())
            class_names = list(self.class_names) or voc.dataset_class_names(roots)
            return voc.read_voc(roots, splits, class_names, **policy)
        if self.dataset == "synthetic":
            # Training splits and evaluation splits come from different seeds.
            train = splits[0].startswith("train")
            return synthetic.make_synthetic(
                self.synthetic_images if train else max(1, self.synthetic_images // 4),
                seed=0 if train else 1,
                small_fraction=self.synthetic_small_fraction,
                clutter=(0, self.synthetic_clutter),
            )
        if len(splits) != 1:
            raise ValueError(f"--dataset={self.dataset} takes one split; got {splits}.")
        if self.dataset == "coco_subset":
            return vendored.load_coco_subset(splits[0], **policy)
        root = self._folders()[0]
        if self.dataset == "tfrecord":
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


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The detector: a registry name (`keras_scb.models.available_detectors`) and
    the builder's options that were set."""

    model: str = setting("mobilenetv2-ssdlite300",
                         "Detector name; see keras_scb.models.available_detectors().")
    num_classes: int = setting(
        0, "Foreground classes. 0 takes the dataset's; any other value must equal it.",
        valid=NON_NEGATIVE)
    backbone_weights: Optional[str] = setting(
        None, "Unset: the model's default (vendored ImageNet weights for "
        "MobileNetV2 1.0, random otherwise). 'imagenet': Keras's ImageNet "
        "file from its cache ~/.keras/models/ ($KERAS_HOME/models/), "
        "downloaded there when online; offline without it the run stops "
        "before reading data, naming the file. VGG16 detectors (SSD, FSSD, "
        "RefineDet) load conv1_1..conv5_3 and fc6/fc7 subsampled from fc1/fc2 "
        "(vgg16_weights_tf_dim_ordering_tf_kernels.h5, the with-top file); "
        "DSSD loads ResNet-101 (resnet101_weights_tf_dim_ordering_tf_kernels"
        "_notop.h5). A path: that file (the same Keras file, or a .weights.h5 "
        "of the keras.applications model), or for VGG16 detectors a reference .pth "
        "(torchvision's / ssd.pytorch's reduced-fc VGG16, docs/pretrained.md), which sets "
        "the input normalisation it was trained with. 'none': random.")
    width_multiplier: Optional[float] = setting(
        None, "MobileNetV2 width multiplier of SSDLite models.", valid=POSITIVE)
    bn_momentum: Optional[float] = setting(None, "BatchNorm momentum of models that take it.",
                                           valid=BELOW_ONE)
    anchors: Optional[str] = setting(
        None, "Anchor preset overriding the model's default (e.g. ssd300_coco); see "
        "keras_scb.anchors.PRESETS.")
    init_checkpoint: Optional[str] = setting(
        None, "A .keras of the same --model (e.g. from keras_scb.convert_weights) to start "
        "from: every layer whose name and shapes match is loaded, the others (a head for "
        "another class count) are new; its input normalisation comes along "
        "(keras_scb.checkpoints.init_from_checkpoint). A resumed run continues from its "
        "backup instead.", train_only=True)

    def _check(self) -> None:
        from keras_scb.models import available_detectors

        if self.model not in available_detectors():
            raise ValueError(
                f"--model={self.model!r} is not a detector; available: {available_detectors()}."
            )
        if self.init_checkpoint and self.backbone_weights is not None:
            raise ValueError("--init_checkpoint sets the backbone; drop --backbone_weights.")

    @property
    def output_layout(self) -> str:
        """The registered detector's `keras_scb.output_layout` name."""
        from keras_scb.models import detector_entry

        return detector_entry(self.model).output_layout

    def builder_kwargs(self) -> Dict[str, Any]:
        """`keras_scb.models.build_detector` keyword arguments of the options that were set."""
        kwargs: Dict[str, Any] = {}
        if self.backbone_weights is not None:
            kwargs["backbone_weights"] = (
                None if self.backbone_weights.lower() == "none" else self.backbone_weights
            )
        for name in ("width_multiplier", "bn_momentum", "anchors"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.init_checkpoint:  # the checkpoint's input normalisation; checked here
            from keras_scb.checkpoints import init_checkpoint_options

            kwargs.update(init_checkpoint_options(self.init_checkpoint, self.model))
        return kwargs

    def check_backbone_weights(self) -> None:
        """Fails before any data is read if ``--backbone_weights`` cannot be loaded
        (a missing file; 'imagenet' offline without Keras's cached file), or
        ``--init_checkpoint`` is not a checkpoint of ``--model``."""
        from keras_scb.models.backbones import check_backbone_weights

        try:
            check_backbone_weights(self.model, self.builder_kwargs().get("backbone_weights"))
        except RuntimeError as error:  # offline: bad input, not a bug
            raise ValueError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class LossConfig(_Section):
    """The training loss (`keras_scb.losses`, `keras_scb.refinedet_loss`)."""

    loss: str = setting("scb", "Training loss.", choices=LOSSES)
    alpha: float = setting(1.0, "SCB alpha in beta * (ln M + alpha) / M.", valid=NON_NEGATIVE)
    beta: float = setting(3.0, "SCB beta.", valid=POSITIVE)
    weighting: str = setting(
        "scb", "Object weighting of --loss=scb: the paper's Table 1 forms, and the controls "
        "'uniform_beta' (every positive weighs beta) and 'scb_mean_normalised' (SCB "
        "rescaled to mean 1 over an image's positive anchors); see keras_scb.losses.",
        choices=WEIGHTINGS)
    apply_to: str = setting("classification", "'classification': the authors' code; "
                            "'both': the paper's Eq. 2.", choices=("classification", "both"))
    neg_pos_ratio: int = setting(3, "Hard negatives kept per positive.", valid=NON_NEGATIVE)
    class_weights: Tuple[float, ...] = setting(
        (), "Optional factor per class (in the dataset's class order) on the positive "
        "anchors' weights, on top of the object weighting; empty: all 1.")
    scb_on: str = setting("arm", "--loss=refinedet: which RefineDet branch gets SCB "
                          "(the paper: arm).", choices=("arm", "odm", "both", "none"))
    match_on: str = setting(
        "cpu", "Where --loss=scb/multibox match anchors to the ground truth: 'cpu', in the "
        "input pipeline; 'device', inside the compiled train step (keras_scb.on_device), "
        "so the CPUs only decode and augment. Same targets either way. RefineDet "
        "always matches in its loss.", choices=("cpu", "device"))

    def _check(self) -> None:
        if not all(0 <= w < math.inf for w in self.class_weights):
            raise ValueError(f"--class_weights={_joined(self.class_weights)}: need finite "
                             "numbers >= 0.")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """The optimizer (`keras_scb.optimizers`); its learning rate is the schedule's."""

    optimizer: str = setting("sgd", "SGD with momentum, as the paper's baselines.",
                             choices=("sgd", "adamw"))
    momentum: float = setting(0.9, "SGD momentum.", valid=BELOW_ONE)
    weight_decay: float = setting(5e-4, "Weight decay (not applied to biases and BatchNorm).",
                                  valid=NON_NEGATIVE)
    weight_decay_mode: str = setting(
        "l2", "SGD's weight decay. 'l2': weight_decay * w added to the gradient before "
        "the momentum, as Caffe and PyTorch (the references); 'decoupled': Keras's "
        "weight_decay (w -= lr * weight_decay * w outside the momentum, about 10x "
        "weaker at momentum 0.9). AdamW's decay is always decoupled.",
        choices=("l2", "decoupled"))
    clipnorm: Optional[float] = setting(None, "Optional gradient-norm clipping.", valid=POSITIVE)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(_Section):
    """How long, in what batches, at which learning rate (`keras_scb.schedules`)."""

    batch_size: int = setting(8, "Global batch size (split over replicas).", valid=AT_LEAST_ONE)
    epochs: int = setting(10, "Epochs to train.", valid=AT_LEAST_ONE)
    steps_per_epoch: int = setting(0, "Steps per epoch; 0 = one pass over the training split.",
                                   valid=NON_NEGATIVE)
    learning_rate: float = setting(1e-3, "Learning rate after warm-up.", valid=POSITIVE)
    warmup_steps: int = setting(0, "Linear warm-up steps from learning_rate / 3.",
                                valid=NON_NEGATIVE)
    lr_schedule: str = setting(
        "step", "After warm-up: 'step' multiplies the rate by lr_decay at lr_decay_steps "
        "(SSD's schedule); 'cosine' anneals it to 0 at the last step.", choices=("step", "cosine"))
    lr_decay_steps: Tuple[int, ...] = setting(
        (), "Global steps at which the rate is multiplied by lr_decay.",
        valid=Range(1, increasing=True))
    lr_decay: float = setting(0.1, "Step-decay factor.", valid=POSITIVE)

    def _check(self) -> None:
        if self.lr_schedule == "cosine" and self.lr_decay_steps:
            raise ValueError("--lr_decay_steps belongs to --lr_schedule=step, not cosine.")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(_Section):
    """Where the run writes, and how it runs: seed, numerics, devices, evaluation, logs."""

    model_dir: Optional[str] = setting(None, "Output folder (required).")
    seed: int = setting(0, "Seed of weights, augmentation and shuffling.", valid=NON_NEGATIVE)
    deterministic: bool = setting(False, "Deterministic input pipeline and TF ops (slower).")
    mixed_precision: str = setting(
        "float32", "Keras dtype policy. mixed_bfloat16 is about 2x faster on CPUs with "
        "AVX512-BF16.", choices=("float32", "mixed_bfloat16", "mixed_float16"))
    jit_compile: str = setting(
        "auto", "XLA. 'auto' is Keras's choice: off on CPU-only TensorFlow (slower there, "
        "especially with depthwise convolutions), on under JAX and on GPUs.",
        choices=("auto", "true", "false"))
    strategy: str = setting(
        "default", "mirrored / multi_worker: tf.distribute (TensorFlow backend; multi_worker "
        "reads TF_CONFIG). data_parallel: keras.distribution.DataParallel over all "
        "devices JAX sees (KERAS_BACKEND=jax; multi-host after "
        "jax.distributed.initialize, see the README).", choices=STRATEGIES)
    eval_every: int = setting(0, "Evaluate on --val_split every N epochs (0: only at the end).",
                              valid=NON_NEGATIVE)
    eval_batch_size: int = setting(8, "Batch size of evaluation.", valid=AT_LEAST_ONE)
    final_eval: bool = setting(True, "Evaluate the best checkpoint at the end.")
    verbose: int = setting(1, "Keras fit verbosity (1: progress bar, 2: one line an epoch).",
                           valid=Range(0, 2))
    allow_recipe_change: bool = setting(
        False, "Resume a run with another training recipe (loss, optimizer, schedule, "
        "batch size...; see keras_scb.run_folder.RECIPE); the change is kept in the history "
        "of its flags.json. The network flags must always match.", train_only=True)

    def _check(self) -> None:
        if not self.model_dir:
            raise ValueError("--model_dir is required.")


# The flags of `AugmentConfig`'s fields (the others are set from Python only).
_AUGMENT_FLAGS = {
    "expand_prob": "--augment: probability of SSD's zoom out (the paper's 0.5).",
    "max_expand": "--augment: largest zoom-out canvas side, as a multiple of the image side "
                  "(the paper's 4; objects shrink up to this factor).",
}

# Section attribute of `TrainConfig` -> its class, in flag-definition order.
SECTIONS: Dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "loss": LossConfig,
    "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
    "augmentation": AugmentConfig, "runtime": RuntimeConfig,
}


def _flag_fields(section: type) -> Iterator[dataclasses.Field]:
    for field in dataclasses.fields(section):
        if section is not AugmentConfig or field.name in _AUGMENT_FLAGS:
            yield field


# Flag name -> the section attribute that holds it.
FLAG_SECTIONS: Dict[str, str] = {
    field.name: name for name, section in SECTIONS.items() for field in _flag_fields(section)
}


def _section(section: type, base: Any = None, **values: Any) -> Any:
    """``section(**values)`` (or ``base`` with ``values`` replaced); an
    `AugmentConfig` error gets its field's flag spelling."""
    try:
        return dataclasses.replace(base, **values) if base is not None else section(**values)
    except ValueError as error:
        if section is AugmentConfig:
            raise ValueError(f"--{error}") from None
        raise


def _check_flag_names(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(FLAG_SECTIONS))
    if unknown:
        raise ValueError(f"--{unknown[0]} is not a flag of keras_scb.train.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is made of; see the module docstring.

    ``TrainConfig(runtime=RuntimeConfig(model_dir="runs/x"))`` is the default
    recipe; `from_flagfile`, `from_flag_values` and `replace` take settings by flag
    name.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    augmentation: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        for name, section in SECTIONS.items():
            if not isinstance(getattr(self, name), section):
                raise ValueError(f"TrainConfig.{name} must be a {section.__name__}; "
                                 f"got {getattr(self, name)!r}.")
        refinedet = self.model.output_layout == REFINEDET
        if self.loss.loss == "refinedet" and not refinedet:
            raise ValueError(
                f"--loss=refinedet needs a RefineDet --model; got {self.model.model!r}.")
        if refinedet and self.loss.loss != "refinedet":
            raise ValueError(f"--model={self.model.model} trains with --loss=refinedet.")

    # --- construction by flag name ---------------------------------------------------

    @classmethod
    def from_flag_values(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """The config of ``{flag name: value}`` (a flag left out keeps its default);
        values as absl holds them (lists of strings) or typed."""
        _check_flag_names(values)
        return cls(**{
            name: _section(section, **{f.name: values[f.name] for f in _flag_fields(section)
                                       if f.name in values})
            for name, section in SECTIONS.items()
        })

    @classmethod
    def from_args(cls, args: Sequence[str]) -> "TrainConfig":
        """The config of ``python -m keras_scb.train ARGS``' flags (``--flagfile=`` too),
        parsed by absl as the command line parses them, without touching absl's
        process-wide ``FLAGS``."""
        return cls.from_flag_values(parse_flags(args))

    @classmethod
    def from_flagfile(cls, path: str, **overrides: Any) -> "TrainConfig":
        """The config of a flagfile (e.g. ``configs/quickstart.cfg``), with
        ``overrides`` by flag name (``epochs=1, model_dir="runs/x"``) on top."""
        values = parse_flags([f"--flagfile={path}"])
        _check_flag_names(overrides)
        return cls.from_flag_values({**values, **overrides})

    def replace(self, **values: Any) -> "TrainConfig":
        """A copy with the settings ``values`` (by flag name) changed."""
        _check_flag_names(values)
        sections = {}
        for name, section in SECTIONS.items():
            changed = {f.name: values[f.name] for f in _flag_fields(section) if f.name in values}
            sections[name] = (_section(section, getattr(self, name), **changed)
                              if changed else getattr(self, name))
        return dataclasses.replace(self, **sections)

    # --- checks that need the dataset ---------------------------------------------------

    def check_classes(self, class_names: Sequence[str]) -> None:
        """``--num_classes`` and ``--class_weights`` against the dataset's label map."""
        if self.model.num_classes and self.model.num_classes != len(class_names):
            raise ValueError(
                f"--num_classes={self.model.num_classes} but --dataset={self.data.dataset} has "
                f"{len(class_names)} classes {list(class_names)}."
            )
        weights = self.loss.class_weights
        if weights and len(weights) != len(class_names):
            raise ValueError(
                f"--class_weights={_joined(weights)}: need {len(class_names)} finite "
                f"numbers >= 0, one per class {list(class_names)}."
            )

    # --- round trips ----------------------------------------------------------------------

    def to_flag_values(self) -> Dict[str, Any]:
        """``{flag name: value}`` of every flag, lists as absl holds them (lists of
        strings): what a run writes to ``flags.json``."""
        values = {}
        for name, section in SECTIONS.items():
            for field in _flag_fields(section):
                value = getattr(getattr(self, name), field.name)
                values[field.name] = [str(v) for v in value] if isinstance(value, tuple) else value
        return values

    def to_flagfile(self, path: str) -> None:
        """Writes every flag (defaults too) as an absl flagfile that `from_flagfile`
        and ``--flagfile=`` read back to this config."""
        write_text("".join(line + "\n" for line in self.flag_lines()), path)

    def flag_lines(self) -> List[str]:
        """``--name=value`` for every flag; `ValueError` for a setting that has no flag
        (an `AugmentConfig` field other than ``expand_prob``/``max_expand``) or a list
        item with a comma (use `to_json` for those)."""
        default = AugmentConfig()
        for field in dataclasses.fields(AugmentConfig):
            if field.name not in _AUGMENT_FLAGS and (
                    getattr(self.augmentation, field.name) != getattr(default, field.name)):
                raise ValueError(f"augmentation.{field.name} has no flag; save this config "
                                 "with to_json.")
        lines = []
        for name, value in self.to_flag_values().items():
            if value is None:
                continue  # the flag's default
            if isinstance(value, list):
                if any("," in item for item in value):
                    raise ValueError(f"--{name}: an item holds a comma; save this config "
                                     "with to_json.")
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            lines.append(f"--{name}={value}")
        return lines

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        """``{section: {field: value}}``, tuples as lists: JSON-ready."""
        return {name: {f.name: list(v) if isinstance(v, tuple) else v
                       for f in dataclasses.fields(section)
                       for v in [getattr(getattr(self, name), f.name)]}
                for name, section in SECTIONS.items()}

    @classmethod
    def from_dict(cls, sections: Mapping[str, Mapping[str, Any]]) -> "TrainConfig":
        """The inverse of `to_dict`; a section or field left out keeps its default."""
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a section of TrainConfig; sections: "
                             f"{list(SECTIONS)}.")
        built = {}
        for name, values in sections.items():
            section = SECTIONS[name]
            fields = {f.name for f in dataclasses.fields(section)}
            if set(values) - fields:
                raise ValueError(f"{name}.{sorted(set(values) - fields)[0]} is not a field "
                                 f"of {section.__name__}.")
            # AugmentConfig takes tuples: JSON gives lists.
            built[name] = _section(section, **{
                k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        return cls(**built)

    def to_json(self, path: str) -> None:
        """Writes `to_dict` as JSON (atomically)."""
        write_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, path: str) -> "TrainConfig":
        """The config that `to_json` wrote to ``path``."""
        import json

        try:
            sections = json.loads(read_text(path))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error}).") from None
        return cls.from_dict(sections)


# --- the flags ----------------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues,
                 sections: Sequence[type] = tuple(SECTIONS.values()),
                 train_only: bool = True) -> None:
    """Defines the flags of ``sections``' fields in ``flag_values``; with
    ``train_only=False``, only the flags that other tools share."""
    for section in sections:
        hints = typing.get_type_hints(section)
        for field in _flag_fields(section):
            if field.metadata.get("train_only") and not train_only:
                continue
            _define(flag_values, field, hints[field.name])


def _define(flag_values: flags.FlagValues, field: dataclasses.Field, hint: Any) -> None:
    name, default = field.name, field.default
    help = field.metadata.get("help") or _AUGMENT_FLAGS[name]
    choices = field.metadata.get("choices")
    kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if typing.get_origin(hint) is tuple:
        flags.DEFINE_list(name, [str(v) for v in default], help, flag_values=flag_values)
    elif choices:
        flags.DEFINE_enum(name, default, list(choices), help, flag_values=flag_values)
    else:
        define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                  float: flags.DEFINE_float, str: flags.DEFINE_string}[kind]
        define(name, default, help, flag_values=flag_values)
    valid = field.metadata.get("range")
    if valid is not None:
        def holds(value: Any) -> bool:
            try:
                value = _coerce(name, hint, value)
            except ValueError:
                return False
            return value is None or valid.holds(value)

        what = (f"a comma-separated list of {_PLURALS[typing.get_args(hint)[0]]}, each {valid}"
                if typing.get_origin(hint) is tuple else str(valid))
        flags.register_validator(name, holds, message=f"must be {what}", flag_values=flag_values)


def parse_flags(args: Sequence[str]) -> Dict[str, Any]:
    """``{flag name: value}`` of the train flags in ``args`` (every flag, defaults
    too), parsed by absl in a flag set of its own; `ValueError` for what absl refuses."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    try:
        rest = flag_values(["train", *args])
    except flags.Error as error:
        raise ValueError(" ".join(str(error).split())) from None
    if len(rest) > 1:
        raise ValueError(f"Unexpected arguments: {rest[1:]}")
    return {name: flag_values[name].value for name in FLAG_SECTIONS}


def flag_values_of(flag_values: flags.FlagValues,
                   sections: Sequence[type] = tuple(SECTIONS.values())) -> Dict[str, Any]:
    """``{flag name: value}`` of ``sections``' flags that ``flag_values`` defines."""
    return {field.name: flag_values[field.name].value
            for section in sections for field in _flag_fields(section)
            if field.name in flag_values}

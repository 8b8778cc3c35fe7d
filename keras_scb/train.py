"""Trains a detector: ``python -m keras_scb.train --flagfile=configs/NAME.cfg``.

Writes to ``--model_dir``: ``last.keras`` every epoch, ``best.keras`` when the
validation AP50 improves (both written atomically), ``backup/`` (the resumable
state: run the same command again after a crash or kill and training continues
from the last finished epoch), ``history.csv``, TensorBoard logs under ``logs/``,
``labels.txt`` (one class name a line) and, at the end, the evaluation of
``best.keras`` (or ``last.keras``) in ``eval/metrics.{json,md}``.

Every flag is listed by ``python -m keras_scb.train --helpfull``.
"""

import contextlib
import math
import os

from absl import app, flags, logging

from keras_scb import cli, label_map, run_folder
from keras_scb import flags as common_flags
from keras_scb.fileio import check_not_input, check_writable, remove_stale_temporaries, write_text

common_flags.define_data_flags()
common_flags.define_model_flags()
flags.DEFINE_string("model_dir", None, "Output folder (required).")
flags.DEFINE_integer("batch_size", 8, "Global batch size (split over replicas).")
flags.DEFINE_integer("epochs", 10, "Epochs to train.")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch; 0 = one pass over the training split.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "SGD with momentum, as the paper's baselines.")
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate after warm-up.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (not applied to biases and BatchNorm).")
flags.DEFINE_enum("weight_decay_mode", "l2", ["l2", "decoupled"],
                  "SGD's weight decay. 'l2': weight_decay * w added to the gradient before "
                  "the momentum, as Caffe and PyTorch (the references); 'decoupled': Keras's "
                  "weight_decay (w -= lr * weight_decay * w outside the momentum, about 10x "
                  "weaker at momentum 0.9). AdamW's decay is always decoupled.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps from learning_rate / 3.")
flags.DEFINE_enum("lr_schedule", "step", ["step", "cosine"],
                  "After warm-up: 'step' multiplies the rate by lr_decay at lr_decay_steps "
                  "(SSD's schedule); 'cosine' anneals it to 0 at the last step.")
flags.DEFINE_list("lr_decay_steps", [], "Global steps at which the rate is multiplied by lr_decay.")
flags.DEFINE_float("lr_decay", 0.1, "Step-decay factor.")
flags.DEFINE_float("clipnorm", None, "Optional gradient-norm clipping.")
flags.DEFINE_enum("loss", "scb", ["multibox", "scb", "refinedet"], "Training loss.")
flags.DEFINE_float("alpha", 1.0, "SCB alpha in beta * (ln M + alpha) / M.")
flags.DEFINE_float("beta", 3.0, "SCB beta.")
flags.DEFINE_enum("weighting", "scb", ["uniform", "inverse_log", "inverse_sqrt", "inverse", "scb",
                                       "uniform_beta", "scb_mean_normalised"],
                  "Object weighting of --loss=scb: the paper's Table 1 forms, and the controls "
                  "'uniform_beta' (every positive weighs beta) and 'scb_mean_normalised' (SCB "
                  "rescaled to mean 1 over an image's positive anchors); see keras_scb.losses.")
flags.DEFINE_enum("apply_to", "classification", ["classification", "both"],
                  "'classification': the authors' code; 'both': the paper's Eq. 2.")
flags.DEFINE_integer("neg_pos_ratio", 3, "Hard negatives kept per positive.")
flags.DEFINE_list("class_weights", [],
                  "Optional factor per class (in the dataset's class order) on the positive "
                  "anchors' weights, on top of the object weighting; empty: all 1.")
flags.DEFINE_enum("scb_on", "arm", ["arm", "odm", "both", "none"],
                  "--loss=refinedet: which RefineDet branch gets SCB (the paper: arm).")
flags.DEFINE_enum("match_on", "cpu", ["cpu", "device"],
                  "Where --loss=scb/multibox match anchors to the ground truth: 'cpu', in the "
                  "input pipeline; 'device', inside the compiled train step (keras_scb.on_device), "
                  "so the CPUs only decode and augment. Same targets either way. RefineDet "
                  "always matches in its loss.")
flags.DEFINE_integer("max_boxes", 0,
                     "Boxes per image kept by the input pipeline where it pads the ground truth "
                     "(--match_on=device, RefineDet); 0: the training split's most boxes on one "
                     "image, so none is dropped. A smaller value drops boxes, with a warning "
                     "that counts them.")
flags.DEFINE_bool("augment", True, "SSD data augmentation.")
flags.DEFINE_float("expand_prob", 0.5,
                   "--augment: probability of SSD's zoom out (the paper's 0.5).")
flags.DEFINE_float("max_expand", 4.0,
                   "--augment: largest zoom-out canvas side, as a multiple of the image side "
                   "(the paper's 4; objects shrink up to this factor).")
flags.DEFINE_bool("keep_difficult", False,
                  "Train on VOC 'difficult' (COCO crowd) boxes too, as Caffe SSD/RefineDet "
                  "(use_difficult_gt) and PytorchSSD do; ssd.pytorch drops them (the default). "
                  "Evaluation ignores them either way.")
flags.DEFINE_integer("seed", 0, "Seed of weights, augmentation and shuffling.")
flags.DEFINE_bool("deterministic", False, "Deterministic input pipeline and TF ops (slower).")
flags.DEFINE_enum("mixed_precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy. mixed_bfloat16 is about 2x faster on CPUs with AVX512-BF16.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                  "XLA. 'auto' is Keras's choice: off on CPU-only TensorFlow (slower there, "
                  "especially with depthwise convolutions), on under JAX and on GPUs.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "data_parallel"],
                  "mirrored / multi_worker: tf.distribute (TensorFlow backend; multi_worker "
                  "reads TF_CONFIG). data_parallel: keras.distribution.DataParallel over all "
                  "devices JAX sees (KERAS_BACKEND=jax; multi-host after "
                  "jax.distributed.initialize, see the README).")
flags.DEFINE_integer("eval_every", 0, "Evaluate on --val_split every N epochs (0: only at the end).")
flags.DEFINE_integer("eval_batch_size", 8, "Batch size of evaluation.")
flags.DEFINE_bool("final_eval", True, "Evaluate the best checkpoint at the end.")
flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bar, 2: one line an epoch).")
flags.DEFINE_bool("allow_recipe_change", False,
                  "Resume a run with another training recipe (loss, optimizer, schedule, "
                  "batch size...; see keras_scb.run_folder.RECIPE); the change is kept in "
                  "the history of its flags.json. The network flags must always match.")

for _name in ("batch_size", "epochs", "eval_batch_size"):
    common_flags.at_least(_name, 1)
for _name in ("steps_per_epoch", "warmup_steps", "weight_decay", "alpha", "neg_pos_ratio",
              "max_boxes", "seed", "eval_every"):
    common_flags.at_least(_name, 0)
for _name in ("learning_rate", "beta", "lr_decay", "clipnorm"):
    common_flags.above(_name, 0)
common_flags.between("momentum", 0, 1, open_high=True)
common_flags.whole_numbers("lr_decay_steps", 1, increasing=True)
common_flags.between("verbose", 0, 2)

FLAGS = flags.FLAGS


def _strategy():
    import keras

    if FLAGS.strategy == "data_parallel":
        _set_data_parallel()
        return None
    if keras.backend.backend() != "tensorflow":
        if FLAGS.strategy != "default":
            raise app.UsageError(
                f"--strategy={FLAGS.strategy} needs the TensorFlow backend; "
                f"KERAS_BACKEND is {keras.backend.backend()}."
            )
        return None
    import tensorflow as tf

    if FLAGS.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if FLAGS.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise app.UsageError("--strategy=multi_worker needs the TF_CONFIG environment variable.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _set_data_parallel():
    """``keras.distribution.DataParallel`` over every device JAX sees (all hosts').

    The weights are replicated and each global batch is split along its first
    axis; the step is one jitted global computation, so the loss normaliser ``N``
    and BatchNorm statistics are over the global batch by construction.

    Multi-host: with ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (comma-separated
    ``host:port``, the first is the coordinator), ``KERAS_DISTRIBUTION_NUM_PROCESSES``
    and ``KERAS_DISTRIBUTION_PROCESS_ID`` set on every host,
    ``keras.distribution.initialize`` (``jax.distributed.initialize``) runs first,
    and the devices are every host's. Keras gives each process its shard of the
    ``tf.data`` pipeline (``DataParallel.distribute_dataset``), so ``--batch_size``
    stays the global batch. Every process holds the same weights and writes its
    own files: process 0 to ``--model_dir``, process ``i > 0`` to
    ``--model_dir/process_i``, so hosts that share a file system never write the
    same file.
    """
    import keras

    if keras.backend.backend() != "jax":
        raise app.UsageError(
            f"--strategy=data_parallel needs KERAS_BACKEND=jax; it is {keras.backend.backend()} "
            "(use --strategy=mirrored under TensorFlow)."
        )
    if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        import jax

        keras.distribution.initialize()
        if jax.process_index() > 0:
            FLAGS.model_dir = os.path.join(FLAGS.model_dir, f"process_{jax.process_index()}")
    devices = keras.distribution.list_devices()
    if FLAGS.batch_size % len(devices):
        raise app.UsageError(
            f"--batch_size={FLAGS.batch_size} does not split over the {len(devices)} devices "
            f"of --strategy=data_parallel."
        )
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))


def _loss(detector):
    from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
    from keras_scb.on_device import MatchOnDevice

    if FLAGS.loss in ("multibox", "scb"):
        if FLAGS.loss == "multibox":
            loss = MultiBoxLoss(
                neg_pos_ratio=FLAGS.neg_pos_ratio, class_weights=_class_weights()
            )
        else:
            loss = ScaleBalancedLoss(
                alpha=FLAGS.alpha, beta=FLAGS.beta, neg_pos_ratio=FLAGS.neg_pos_ratio,
                apply_to=FLAGS.apply_to, weighting=FLAGS.weighting,
                class_weights=_class_weights(),
            )
        if FLAGS.match_on == "device":
            return MatchOnDevice(loss, detector.anchor_spec)
        return loss
    from keras_scb.refinedet_loss import RefineDetLoss

    def branch_weighting(branch):
        return FLAGS.weighting if FLAGS.scb_on in (branch, "both") else "uniform"

    return RefineDetLoss(
        detector.anchor_spec,
        arm_weighting=branch_weighting("arm"),
        odm_weighting=branch_weighting("odm"),
        alpha=FLAGS.alpha, beta=FLAGS.beta, neg_pos_ratio=FLAGS.neg_pos_ratio,
        apply_to=FLAGS.apply_to, class_weights=_class_weights(),
    )


def _class_weights():
    """``--class_weights`` as floats, or None; a one-line error for a non-number
    (the count and range are checked in `_check_class_weights`)."""
    try:
        return [float(w) for w in FLAGS.class_weights] or None
    except ValueError:
        raise app.UsageError(
            f"--class_weights={','.join(FLAGS.class_weights)}: not a list of numbers."
        ) from None


def _check_class_weights(class_names):
    """One factor per class, each a finite number >= 0; a one-line error otherwise."""
    weights = _class_weights()
    if weights is None:
        return
    if len(weights) != len(class_names) or not all(0 <= w < float("inf") for w in weights):
        raise app.UsageError(
            f"--class_weights={','.join(FLAGS.class_weights)}: need {len(class_names)} finite "
            f"numbers >= 0, one per class {list(class_names)}."
        )


# The cosine schedule's final learning rate, as a fraction of the peak rate.
COSINE_FLOOR = 0.0


def learning_rate_schedule(total_steps):
    """The flags' schedule: linear warm-up from a third of the rate, then step or cosine decay."""
    import keras

    from keras_scb.schedules import WARMUP_FACTOR, WarmupStepDecay

    if FLAGS.lr_schedule == "step":
        return WarmupStepDecay(
            FLAGS.learning_rate,
            boundaries=[int(s) for s in FLAGS.lr_decay_steps],
            decay_factor=FLAGS.lr_decay,
            warmup_steps=FLAGS.warmup_steps,
        )
    warmup_factor = WARMUP_FACTOR if FLAGS.warmup_steps else 1.0
    return keras.optimizers.schedules.CosineDecay(
        FLAGS.learning_rate * warmup_factor,
        decay_steps=max(1, total_steps - FLAGS.warmup_steps),
        alpha=COSINE_FLOOR,  # CosineDecay's name for the floor
        warmup_target=FLAGS.learning_rate if FLAGS.warmup_steps else None,
        warmup_steps=FLAGS.warmup_steps,
    )


def _optimizer(total_steps):
    import keras

    from keras_scb.optimizers import NO_DECAY_NAMES, CoupledDecaySGD

    schedule = learning_rate_schedule(total_steps)
    common = dict(learning_rate=schedule, clipnorm=FLAGS.clipnorm)
    if FLAGS.optimizer == "sgd" and FLAGS.weight_decay_mode == "l2":
        return CoupledDecaySGD(l2=FLAGS.weight_decay, momentum=FLAGS.momentum, **common)
    common["weight_decay"] = FLAGS.weight_decay or None
    if FLAGS.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=FLAGS.momentum, **common)
    else:
        optimizer = keras.optimizers.AdamW(**common)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer


class TrainingDiverged(cli.UserError):
    """The loss or the weights became non-finite; nothing non-finite was saved."""


class TrainingInterrupted(cli.UserError):
    """SIGINT or SIGTERM ended the training; the backup keeps the last finished epoch."""


def _check_flags():
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    # --- the one output rule (issue 25): the run folder is no input, holds none, is in none.
    weights = FLAGS.backbone_weights
    check_not_input(FLAGS.model_dir, [*FLAGS.data_dir, weights if weights and os.path.exists(
        weights) else None], "--model_dir")
    common_flags.check_model_name()
    try:  # 'imagenet' offline must stop the run here, before any data is read
        common_flags.check_backbone_weights()
    except (ValueError, RuntimeError) as error:
        raise app.UsageError(str(error)) from None
    from keras_scb.models import detector_entry
    from keras_scb.output_layout import REFINEDET

    refinedet = detector_entry(FLAGS.model).output_layout == REFINEDET
    if FLAGS.loss == "refinedet" and not refinedet:
        raise app.UsageError(f"--loss=refinedet needs a RefineDet --model; got {FLAGS.model!r}.")
    if refinedet and FLAGS.loss != "refinedet":
        raise app.UsageError(f"--model={FLAGS.model} trains with --loss=refinedet.")
    if FLAGS.lr_schedule == "cosine" and FLAGS.lr_decay_steps:
        raise app.UsageError("--lr_decay_steps belongs to --lr_schedule=step, not cosine.")
    augment_config()  # a bad zoom-out flag stops the run before any data is read


def augment_config():
    """The `AugmentConfig` of ``--augment``, ``--expand_prob`` and ``--max_expand``
    (None without augmentation); `app.UsageError` naming the flag if one is out of range."""
    from keras_scb.data.augment import AugmentConfig

    if not FLAGS.augment:
        return None
    try:
        return AugmentConfig(expand_prob=FLAGS.expand_prob, max_expand=FLAGS.max_expand)
    except ValueError as error:  # the message starts with the field, named as its flag
        raise app.UsageError(f"--{error}") from None


def _check_resumed_label_map(backup, class_names):
    """A resumed run keeps its label map: the one of ``backup``'s state, else (a
    backup older than the stored names) the run's ``labels.txt``. Checked before
    anything in ``--model_dir`` is written."""
    if not backup.saved_epoch():
        return
    saved = backup.saved_class_names() or label_map.labels_beside(FLAGS.model_dir)
    if saved is not None:
        label_map.check_same(
            saved, class_names, f"the run to resume in --model_dir={FLAGS.model_dir}",
            common_flags.split_name(FLAGS.train_split),
            f"train on its classes, or use a new --model_dir (or delete {backup.backup_dir})",
        )


def train():
    """Runs training from the parsed flags; returns the final results dict or None."""
    import keras

    from keras_scb import keras_compat
    from keras_scb.callbacks import (
        AtomicModelCheckpoint,
        EpochBackup,
        PeriodicEvaluation,
        trim_history,
    )
    from keras_scb.checkpoints import load_checkpoint
    from keras_scb.data import pipeline
    from keras_scb.models import build_detector
    from keras_scb.validation import evaluate_detector, summary_scalars, write_report

    _check_flags()
    # Multi-worker collectives must be set up before TensorFlow runs anything.
    strategy = _strategy()
    run_folder.lock(FLAGS.model_dir)  # --- run folder (issue 25): one owner
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)

    train_data = common_flags.load_split(FLAGS.train_split)
    val_data = common_flags.load_split(FLAGS.val_split)
    common_flags.check_same_class_names(train_data, val_data)
    num_classes = len(train_data.class_names)
    if FLAGS.num_classes and FLAGS.num_classes != num_classes:
        raise app.UsageError(
            f"--num_classes={FLAGS.num_classes} but --dataset={FLAGS.dataset} has "
            f"{num_classes} classes {list(train_data.class_names)}."
        )
    _check_class_weights(train_data.class_names)
    # Resuming: the last finished epoch's weights and optimizer state.
    backup = EpochBackup(os.path.join(FLAGS.model_dir, "backup"))
    _check_resumed_label_map(backup, train_data.class_names)
    # --- run folder (issue 25): the recipe of a resumed run; a complete run stops here.
    recipe_changes = {}
    if backup.saved_epoch():
        recipe_changes = run_folder.compare_recipe(
            FLAGS.model_dir, FLAGS.flag_values_dict(), FLAGS.allow_recipe_change,
            FLAGS.lr_schedule,
        )
        if backup.saved_epoch() >= FLAGS.epochs:
            print(f"--model_dir={FLAGS.model_dir} is complete: {backup.saved_epoch()} of "
                  f"--epochs={FLAGS.epochs} epochs done; nothing to train (raise --epochs to "
                  "train on).")
            return None
    check_writable(FLAGS.model_dir)
    remove_stale_temporaries(FLAGS.model_dir)
    write_text(
        "\n".join(train_data.class_names) + "\n",
        os.path.join(FLAGS.model_dir, label_map.LABELS_FILE),
    )

    steps = FLAGS.steps_per_epoch or max(
        1, common_flags.num_images(train_data) // FLAGS.batch_size
    )
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        detector = build_detector(
            FLAGS.model, num_classes, class_names=train_data.class_names,
            **common_flags.model_kwargs(),
        )
        detector.compile(
            optimizer=_optimizer(total_steps=steps * FLAGS.epochs),
            loss=_loss(detector),
            jit_compile={"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile],
        )
        initial_epoch = backup.restore(detector)
    # --- run folder (issue 25): recorded only once the restore succeeded.
    run_folder.record_flags(FLAGS.model_dir, FLAGS.flag_values_dict(), initial_epoch,
                            recipe_changes)
    history_path = os.path.join(FLAGS.model_dir, "history.csv")
    trim_history(history_path, initial_epoch)

    train_ds = pipeline.training_pipeline(
        train_data,
        detector.anchors,
        batch_size=FLAGS.batch_size,
        image_size=detector.image_size,
        # Matching in the train step (MatchOnDevice) takes the padded ground truth.
        targets="gt" if FLAGS.match_on == "device" else detector.targets,
        augment=augment_config(),
        keep_difficult=FLAGS.keep_difficult,
        max_boxes=FLAGS.max_boxes,
        seed=FLAGS.seed,
        deterministic=FLAGS.deterministic,
        repeat=True,
    )

    def evaluate_val(model):
        return summary_scalars(evaluate_detector(model, val_data, FLAGS.eval_batch_size))

    # The backup goes last: an epoch counts as done for a resumed run only once
    # its checkpoints and log lines are on disk.
    callbacks = [
        PeriodicEvaluation(evaluate_val, FLAGS.eval_every, prefix="val_"),
        AtomicModelCheckpoint(
            FLAGS.model_dir, monitor="val_coco_AP50" if FLAGS.eval_every else None
        ),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TerminateOnNaN(),
        backup,
    ]
    if keras.backend.backend() == "tensorflow":
        # After PeriodicEvaluation, so that the validation metrics are logged too.
        tensorboard = keras.callbacks.TensorBoard(os.path.join(FLAGS.model_dir, "logs"))
        callbacks.insert(1, tensorboard)
    # model.fit distributes the dataset over the strategy's replicas itself,
    # sharding by the policy the pipeline sets (files for TFRecords).
    fit_context = contextlib.nullcontext()
    if FLAGS.strategy == "multi_worker":
        fit_context = keras_compat.multi_worker_fit(detector, strategy, next(iter(train_ds)))
    with fit_context:
        history = detector.fit(
            train_ds,
            epochs=FLAGS.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=FLAGS.verbose,
        )
    losses = history.history.get("loss", [])
    if not all(math.isfinite(v) for v in losses) or backup.saved_epoch() < FLAGS.epochs:
        kept = backup.saved_epoch()
        raise TrainingDiverged(
            f"Training stopped on a non-finite loss or weights in epoch {kept + 1}; "
            f"last.keras and {FLAGS.model_dir}/backup keep epoch {kept}, the last finite "
            f"state (see {history_path}). Rerunning resumes from it; lower "
            "--learning_rate or add --clipnorm."
        )
    if not FLAGS.final_eval:
        return None
    best = os.path.join(FLAGS.model_dir, "best.keras")
    final = best if os.path.exists(best) else os.path.join(FLAGS.model_dir, "last.keras")
    model = load_checkpoint(final)
    results = evaluate_detector(model, val_data, FLAGS.eval_batch_size)
    results["checkpoint"] = os.path.basename(final)
    print(write_report(results, os.path.join(FLAGS.model_dir, "eval")))
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    try:
        with run_folder.terminations_as_interrupts():
            train()
    except KeyboardInterrupt:  # --- run folder (issue 25): one line, how to resume
        from keras_scb.callbacks import EpochBackup

        done = EpochBackup(os.path.join(FLAGS.model_dir, "backup")).saved_epoch()
        raise TrainingInterrupted(
            f"Training interrupted; {FLAGS.model_dir}/backup keeps epoch {done}, the last "
            "finished one: run the same command to resume from it."
        ) from None
    finally:
        if FLAGS.model_dir:
            run_folder.release(FLAGS.model_dir)
        common_flags.print_skipped_input()


if __name__ == "__main__":
    cli.run(main)

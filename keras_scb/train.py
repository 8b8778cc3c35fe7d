"""Trains a detector: ``train(config)`` in Python, ``python -m keras_scb.train
--flagfile=configs/NAME.cfg`` on the command line.

`train` runs the recipe of a `keras_scb.config.TrainConfig` in this process and
returns a `TrainResult`; the command line only parses its flags into one (every
flag is a field of the config, listed by ``python -m keras_scb.train --helpfull``).

Writes to ``model_dir``: ``last.keras`` every epoch, ``best.keras`` when the
validation AP50 improves (both written atomically), ``backup/`` (the resumable
state: run the same command again after a crash or kill and training continues
from the last finished epoch), ``history.csv``, TensorBoard logs under ``logs/``,
``labels.txt`` (one class name a line), ``flags.json`` (the config as
``{flag: value}``, `TrainConfig.to_flag_values`) and, at the end, the evaluation
of ``best.keras`` (or ``last.keras``) in ``eval/metrics.{json,md}``.

`train` is a sequence of small steps, each a function below, in the order it
calls them: check what needs files, set up the distribution, the process-wide
state, read the data, lock the run folder (`keras_scb.run_folder`), prepare it
(resuming: the recipe compared), build and compile, record the flags, the input
pipeline, the callbacks, fit, the divergence check, the final evaluation.
"""

import contextlib
import dataclasses
import math
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from absl import app, flags, logging

from keras_scb import cli, label_map, run_folder
from keras_scb import config as config_lib
from keras_scb.config import OptimizerConfig, ScheduleConfig, TrainConfig
from keras_scb.fileio import check_not_input, check_writable, remove_stale_temporaries, write_text

# The cosine schedule's final learning rate, as a fraction of the peak rate.
COSINE_FLOOR = 0.0


class TrainingDiverged(cli.UserError):
    """The loss or the weights became non-finite; nothing non-finite was saved."""


class TrainingInterrupted(cli.UserError):
    """SIGINT or SIGTERM ended the training; the backup keeps the last finished epoch."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        model_dir: the run folder (``process_i`` below the configured one on
            data-parallel hosts other than the first).
        last_checkpoint: ``last.keras``, the last epoch's detector.
        best_checkpoint: ``best.keras`` if validation selected one, else None.
        history: the metrics per epoch of this process's ``fit`` (a resumed run:
            only the epochs it trained; ``history.csv`` has them all).
        metrics: the final evaluation's results dict (as ``eval/metrics.json``,
            with ``checkpoint`` naming the file evaluated), None without
            ``final_eval``.
    """

    model_dir: str
    last_checkpoint: str
    best_checkpoint: Optional[str]
    history: Dict[str, List[float]]
    metrics: Optional[Dict[str, Any]]


def train(config: TrainConfig) -> TrainResult:
    """Runs the training recipe of ``config`` in this process.

    Raises:
        ValueError: bad input (the config against the data or the files),
            naming the flag or file (`keras_scb.run_folder.RunFolderBusy`: another
            process owns the run folder; `~keras_scb.run_folder.RecipeChanged`: a
            resume with another recipe); `TrainingDiverged` on a non-finite loss;
            `TrainingInterrupted` on SIGINT (and SIGTERM under
            `run_folder.terminations_as_interrupts`).
    """
    _check_outputs(config)
    # 'imagenet' offline must stop the run here, before any data is read.
    config.model.check_backbone_weights()
    # Multi-worker collectives must be set up before TensorFlow runs anything.
    strategy = _strategy(config)
    model_dir = _process_model_dir(config)
    _set_process_state(config.runtime)
    sources = []
    history, metrics = {}, None
    try:
        train_data, val_data = _read_data(config, sources)
        run_folder.lock(model_dir)  # before the first write into the run folder
        try:
            backup, recipe_changes = _prepare_run_dir(config, model_dir, train_data.class_names)
            if backup.saved_epoch() >= config.schedule.epochs:
                print(f"--model_dir={model_dir} is complete: {backup.saved_epoch()} of "
                      f"--epochs={config.schedule.epochs} epochs done; nothing to train (raise "
                      "--epochs to train on).")
            else:
                history, metrics = _train_and_evaluate(
                    config, strategy, model_dir, train_data, val_data, backup, recipe_changes)
        finally:
            run_folder.release(model_dir)
    except KeyboardInterrupt:
        from keras_scb.callbacks import EpochBackup

        done = EpochBackup(os.path.join(model_dir, "backup")).saved_epoch()
        raise TrainingInterrupted(
            f"Training interrupted; {model_dir}/backup keeps epoch {done}, the last "
            "finished one: run the same command to resume from it."
        ) from None
    finally:
        _print_skipped_input(config, sources)
    best = os.path.join(model_dir, "best.keras")
    return TrainResult(
        model_dir=model_dir,
        last_checkpoint=os.path.join(model_dir, "last.keras"),
        best_checkpoint=best if os.path.exists(best) else None,
        history={key: [float(v) for v in values] for key, values in history.items()},
        metrics=metrics,
    )


def _train_and_evaluate(config: TrainConfig, strategy: Any, model_dir: str, train_data: Any,
                        val_data: Any, backup: Any,
                        recipe_changes: Dict[str, List[Any]]) -> Tuple[Dict[str, list], Any]:
    """Builds (restoring the backup), records the run's flags, fits and evaluates;
    returns the history and the final metrics (None without ``final_eval``)."""
    steps = _steps_per_epoch(config.schedule, train_data)
    detector, initial_epoch = _build_detector(
        config, strategy, train_data.class_names, backup, steps * config.schedule.epochs)
    # Recorded only once the restore succeeded (a failed resume keeps the record).
    run_folder.record_flags(model_dir, config.to_flag_values(), initial_epoch, recipe_changes)
    train_ds = _training_data(config, train_data, detector)
    callbacks = _callbacks(config, model_dir, val_data, backup, initial_epoch)
    history = _fit(config, detector, strategy, train_ds, callbacks, initial_epoch, steps)
    _check_finished(config, model_dir, history, backup)
    metrics = _final_evaluation(config, model_dir, val_data) if config.runtime.final_eval else None
    return history, metrics


def _check_outputs(config: TrainConfig) -> None:
    """The one output rule: the run folder is no input, holds none and lies in none."""
    weights = config.model.backbone_weights
    inputs = [*config.data.data_dir, config.model.init_checkpoint,
              weights if weights and os.path.exists(weights) else None]
    check_not_input(config.runtime.model_dir, inputs, "--model_dir")


def _strategy(config: TrainConfig) -> Any:
    """The ``tf.distribute`` strategy of ``--strategy`` (None: Keras's default, or
    ``keras.distribution`` set for data_parallel)."""
    import keras

    name = config.runtime.strategy
    if name == "data_parallel":
        _set_data_parallel(config.schedule.batch_size)
        return None
    if keras.backend.backend() != "tensorflow":
        if name != "default":
            raise ValueError(
                f"--strategy={name} needs the TensorFlow backend; "
                f"KERAS_BACKEND is {keras.backend.backend()}."
            )
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _set_data_parallel(batch_size: int) -> None:
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
    own files (`_process_model_dir`).
    """
    import keras

    if keras.backend.backend() != "jax":
        raise ValueError(
            f"--strategy=data_parallel needs KERAS_BACKEND=jax; it is {keras.backend.backend()} "
            "(use --strategy=mirrored under TensorFlow)."
        )
    if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    if batch_size % len(devices):
        raise ValueError(
            f"--batch_size={batch_size} does not split over the {len(devices)} devices "
            f"of --strategy=data_parallel."
        )
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))


def _process_model_dir(config: TrainConfig) -> str:
    """``--model_dir`` for process 0, ``--model_dir/process_i`` for process ``i > 0``
    of a multi-host data-parallel run, so hosts that share a file system never
    write the same file."""
    if config.runtime.strategy == "data_parallel" and os.environ.get(
            "KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        import jax

        if jax.process_index() > 0:
            return os.path.join(config.runtime.model_dir, f"process_{jax.process_index()}")
    return config.runtime.model_dir


def _set_process_state(runtime: config_lib.RuntimeConfig) -> None:
    """Seeds, op determinism and the dtype policy: Keras's and TF's process-wide state."""
    import keras

    keras.utils.set_random_seed(runtime.seed)
    if runtime.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(runtime.mixed_precision)


def _read_data(config: TrainConfig, sources: list) -> Tuple[Any, Any]:
    """The training and validation sources, appended to ``sources`` as they are read
    (their skip counts are printed at the end), checked against the config."""
    for split in (config.data.train_split, config.data.val_split):
        sources.append((split, config.data.read_split(split)))
    (_, train_data), (_, val_data) = sources
    config.data.check_same_class_names(train_data, val_data)
    config.check_classes(train_data.class_names)
    return train_data, val_data


def _print_skipped_input(config: TrainConfig, sources: list) -> None:
    from keras_scb.data import records

    for split, source in sources:
        if getattr(source, "issues", None):
            print(f"{config.data.split_name(split)}: {records.format_issues(source.issues)}",
                  file=sys.stderr)


def _steps_per_epoch(schedule: ScheduleConfig, train_data: Any) -> int:
    """``--steps_per_epoch``, or (0) the steps of one pass over the training split."""
    # Images in a `Dataset` or `TFRecordSource`.
    images = getattr(train_data, "num_records", None) or len(train_data)
    return schedule.steps_per_epoch or max(1, images // schedule.batch_size)


def _prepare_run_dir(config: TrainConfig, model_dir: str,
                     class_names: Tuple[str, ...]) -> Tuple[Any, Dict[str, List[Any]]]:
    """Checks the run folder (a resumed run keeps its label map and, unless
    ``--allow_recipe_change``, its recipe: `run_folder.compare_recipe`), clears what
    a killed run left and writes ``labels.txt``; returns the `EpochBackup` and the
    allowed recipe changes (``flags.json`` is written once the restore succeeded)."""
    from keras_scb.callbacks import EpochBackup

    backup = EpochBackup(os.path.join(model_dir, "backup"))
    _check_resumed_label_map(config, model_dir, backup, class_names)
    recipe_changes = {}
    if backup.saved_epoch():
        recipe_changes = run_folder.compare_recipe(
            model_dir, config.to_flag_values(), config.runtime.allow_recipe_change,
            config.schedule.lr_schedule,
        )
    check_writable(model_dir)
    remove_stale_temporaries(model_dir)
    write_text("\n".join(class_names) + "\n", os.path.join(model_dir, label_map.LABELS_FILE))
    return backup, recipe_changes


def _check_resumed_label_map(config: TrainConfig, model_dir: str, backup: Any,
                             class_names: Tuple[str, ...]) -> None:
    """A resumed run keeps its label map: the one of ``backup``'s state, else (a
    backup older than the stored names) the run's ``labels.txt``. Checked before
    anything in ``model_dir`` is written."""
    if not backup.saved_epoch():
        return
    saved = backup.saved_class_names() or label_map.labels_beside(model_dir)
    if saved is not None:
        label_map.check_same(
            saved, class_names, f"the run to resume in --model_dir={model_dir}",
            config.data.split_name(config.data.train_split),
            f"train on its classes, or use a new --model_dir (or delete {backup.backup_dir})",
        )


def _build_detector(config: TrainConfig, strategy: Any, class_names: Tuple[str, ...],
                    backup: Any, total_steps: int) -> Tuple[Any, int]:
    """The compiled detector, under the strategy's scope, with the backup's weights
    and optimizer state restored; returns it and the epoch to start from."""
    from keras_scb.models import build_detector

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        detector = build_detector(config.model.model, len(class_names), class_names=class_names,
                                  **config.model.builder_kwargs())
        if config.model.init_checkpoint:
            from keras_scb.checkpoints import init_from_checkpoint

            logging.info(init_from_checkpoint(detector, config.model.init_checkpoint))
        detector.compile(
            optimizer=optimizer(config.optimizer, config.schedule, total_steps),
            loss=loss(config, detector),
            jit_compile={"auto": "auto", "true": True, "false": False}[config.runtime.jit_compile],
        )
        return detector, backup.restore(detector)


def loss(config: TrainConfig, detector: Any) -> Any:
    """The Keras loss of ``config.loss`` for ``detector``."""
    from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
    from keras_scb.on_device import MatchOnDevice

    settings = config.loss
    class_weights = list(settings.class_weights) or None
    if settings.loss == "refinedet":
        from keras_scb.refinedet_loss import RefineDetLoss

        def branch_weighting(branch):
            return settings.weighting if settings.scb_on in (branch, "both") else "uniform"

        return RefineDetLoss(
            detector.anchor_spec,
            arm_weighting=branch_weighting("arm"),
            odm_weighting=branch_weighting("odm"),
            alpha=settings.alpha, beta=settings.beta, neg_pos_ratio=settings.neg_pos_ratio,
            apply_to=settings.apply_to, class_weights=class_weights,
        )
    if settings.loss == "multibox":
        result = MultiBoxLoss(neg_pos_ratio=settings.neg_pos_ratio, class_weights=class_weights)
    else:
        result = ScaleBalancedLoss(
            alpha=settings.alpha, beta=settings.beta, neg_pos_ratio=settings.neg_pos_ratio,
            apply_to=settings.apply_to, weighting=settings.weighting, class_weights=class_weights,
        )
    if settings.match_on == "device":
        return MatchOnDevice(result, detector.anchor_spec)
    return result


def learning_rate_schedule(schedule: ScheduleConfig, total_steps: int) -> Any:
    """Linear warm-up from a third of the rate, then step or cosine decay."""
    import keras

    from keras_scb.schedules import WARMUP_FACTOR, WarmupStepDecay

    if schedule.lr_schedule == "step":
        return WarmupStepDecay(
            schedule.learning_rate,
            boundaries=list(schedule.lr_decay_steps),
            decay_factor=schedule.lr_decay,
            warmup_steps=schedule.warmup_steps,
        )
    warmup_factor = WARMUP_FACTOR if schedule.warmup_steps else 1.0
    return keras.optimizers.schedules.CosineDecay(
        schedule.learning_rate * warmup_factor,
        decay_steps=max(1, total_steps - schedule.warmup_steps),
        alpha=COSINE_FLOOR,  # CosineDecay's name for the floor
        warmup_target=schedule.learning_rate if schedule.warmup_steps else None,
        warmup_steps=schedule.warmup_steps,
    )


def optimizer(settings: OptimizerConfig, schedule: ScheduleConfig, total_steps: int) -> Any:
    """The Keras optimizer of ``settings``, at the rate of ``schedule``."""
    import keras

    from keras_scb.optimizers import NO_DECAY_NAMES, CoupledDecaySGD

    common = dict(learning_rate=learning_rate_schedule(schedule, total_steps),
                  clipnorm=settings.clipnorm)
    if settings.optimizer == "sgd" and settings.weight_decay_mode == "l2":
        return CoupledDecaySGD(l2=settings.weight_decay, momentum=settings.momentum, **common)
    common["weight_decay"] = settings.weight_decay or None
    if settings.optimizer == "sgd":
        result = keras.optimizers.SGD(momentum=settings.momentum, **common)
    else:
        result = keras.optimizers.AdamW(**common)
    result.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return result


def _training_data(config: TrainConfig, train_data: Any, detector: Any) -> Any:
    """The repeated, batched, augmented ``tf.data`` pipeline of the training split."""
    from keras_scb.data import pipeline

    return pipeline.training_pipeline(
        train_data,
        detector.anchors,
        batch_size=config.schedule.batch_size,
        image_size=detector.image_size,
        # Matching in the train step (MatchOnDevice) takes the padded ground truth.
        targets="gt" if config.loss.match_on == "device" else detector.targets,
        augment=config.augmentation if config.data.augment else None,
        keep_difficult=config.data.keep_difficult,
        max_boxes=config.data.max_boxes,
        seed=config.runtime.seed,
        deterministic=config.runtime.deterministic,
        repeat=True,
    )


def _callbacks(config: TrainConfig, model_dir: str, val_data: Any, backup: Any,
               initial_epoch: int) -> list:
    """Periodic evaluation, checkpoints, the CSV history (trimmed to the resumed
    epoch), NaN stop, TensorBoard; the backup last."""
    import keras

    from keras_scb.callbacks import AtomicModelCheckpoint, PeriodicEvaluation, trim_history
    from keras_scb.validation import evaluate_detector, summary_scalars

    runtime = config.runtime
    history_path = os.path.join(model_dir, "history.csv")
    trim_history(history_path, initial_epoch)

    def evaluate_val(model):
        return summary_scalars(evaluate_detector(model, val_data, runtime.eval_batch_size))

    # The backup goes last: an epoch counts as done for a resumed run only once
    # its checkpoints and log lines are on disk.
    callbacks = [
        PeriodicEvaluation(evaluate_val, runtime.eval_every, prefix="val_"),
        AtomicModelCheckpoint(model_dir, monitor="val_coco_AP50" if runtime.eval_every else None),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TerminateOnNaN(),
        backup,
    ]
    if keras.backend.backend() == "tensorflow":
        # After PeriodicEvaluation, so that the validation metrics are logged too.
        callbacks.insert(1, keras.callbacks.TensorBoard(os.path.join(model_dir, "logs")))
    return callbacks


def _fit(config: TrainConfig, detector: Any, strategy: Any, train_ds: Any, callbacks: list,
         initial_epoch: int, steps: int) -> Dict[str, list]:
    """``detector.fit``; returns its history. model.fit distributes the dataset over
    the strategy's replicas itself, sharding by the policy the pipeline sets (files
    for TFRecords)."""
    from keras_scb import keras_compat

    fit_context = contextlib.nullcontext()
    if config.runtime.strategy == "multi_worker":
        fit_context = keras_compat.multi_worker_fit(detector, strategy, next(iter(train_ds)))
    with fit_context:
        history = detector.fit(
            train_ds,
            epochs=config.schedule.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=config.runtime.verbose,
        )
    return history.history


def _check_finished(config: TrainConfig, model_dir: str, history: Dict[str, list],
                    backup: Any) -> None:
    """`TrainingDiverged` unless every planned epoch finished with a finite loss."""
    losses = history.get("loss", [])
    if not all(math.isfinite(v) for v in losses) or backup.saved_epoch() < config.schedule.epochs:
        kept = backup.saved_epoch()
        raise TrainingDiverged(
            f"Training stopped on a non-finite loss or weights in epoch {kept + 1}; "
            f"last.keras and {model_dir}/backup keep epoch {kept}, the last finite "
            f"state (see {os.path.join(model_dir, 'history.csv')}). Rerunning resumes from "
            "it; lower --learning_rate or add --clipnorm."
        )


def _final_evaluation(config: TrainConfig, model_dir: str, val_data: Any) -> Dict[str, Any]:
    """Evaluates ``best.keras`` (or ``last.keras``) on the validation split into
    ``eval/metrics.{json,md}``; returns the results dict."""
    from keras_scb.checkpoints import load_checkpoint
    from keras_scb.validation import evaluate_detector, write_report

    best = os.path.join(model_dir, "best.keras")
    final = best if os.path.exists(best) else os.path.join(model_dir, "last.keras")
    results = evaluate_detector(load_checkpoint(final), val_data, config.runtime.eval_batch_size)
    results["checkpoint"] = os.path.basename(final)
    print(write_report(results, os.path.join(model_dir, "eval")))
    return results


# --- the command line: flags -> TrainConfig -> train -----------------------------------------

config_lib.define_flags(flags.FLAGS)
flags.adopt_module_key_flags(config_lib)
FLAGS = flags.FLAGS


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    config = TrainConfig.from_flag_values(config_lib.flag_values_of(FLAGS))
    with run_folder.terminations_as_interrupts():
        train(config)


if __name__ == "__main__":
    cli.run(main)

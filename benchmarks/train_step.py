"""Training throughput of the detectors: ``model.fit`` images/second, SCB vs MultiBox.

    python benchmarks/train_step.py [--backend tensorflow|jax] [--models ssd300,...]
        [--precisions float32,mixed_bfloat16] [--steps 3] [--rounds 3]
        [--batch-size 8] [--jit-compile auto|true|false] [--control]

For each model and precision, two copies of the model are compiled, one with
``ScaleBalancedLoss`` and one with ``MultiBoxLoss``; after one warm-up ``fit``
each (tracing/compilation), ``rounds`` timed ``fit`` calls of ``steps`` steps
alternate between them. A round's time is the median of its steps' times
(a callback around each step), without the per-``fit`` set-up. Reported: median
images/second of each and the median of the per-round time ratios SCB / MultiBox
with its distribution-free 95 % interval (from 6 rounds on;
`experiment_stats.median_interval`).

``--control`` compiles both copies with the *same* loss (MultiBox; RefineDet:
no SCB on either step), an A/A run: its ratio shows how far from 1 two
identical steps measure here, the noise floor of the SCB / MultiBox column.

Inputs are random pixels with targets pre-encoded from random boxes by the
library's matching code run with ``keras.ops`` (``benchmarks/synthetic.py``), so
no TensorFlow is needed under JAX and no input pipeline is timed. Under
TensorFlow they are fed as a cached ``tf.data`` dataset with the autotuner off,
as ``keras_scb.data.pipeline`` does: with it on (also what ``fit`` builds from
numpy arrays), about half of SSD300's steps on the 2-core CPU ran with 1.2 cores
busy instead of 2.
"""

import argparse
import os
import statistics
import time

DEFAULT_MODELS = (
    "ssd300,ssd512,fssd300,refinedet320,dssd321,mobilenetv2-ssdlite320"
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow")
    )
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed fit")
    parser.add_argument("--rounds", type=int, default=3, help="timed fits per loss")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument(
        "--jit-compile", default="auto", choices=("auto", "true", "false")
    )
    parser.add_argument(
        "--control", action="store_true",
        help="A/A: both copies with the MultiBox loss (the ratio's noise floor)",
    )
    return parser.parse_args()


def synthetic_batch(model, num_images, seed):
    """Random images ``(N, S, S, 3)`` with 1-10 random boxes each.

    Returns:
        ``(images, targets)``: for SSD-style models the ``(N, A, 6)`` encoded
        targets; for RefineDet (which matches inside its loss) the ``(N, G, 5)``
        ground truth ``[xmin, ymin, xmax, ymax, class]``.
    """
    import numpy as np
    from synthetic import encoded_targets, random_ground_truth

    rng = np.random.default_rng(seed)
    boxes, classes = random_ground_truth(rng, num_images, model.num_classes)
    size = model.image_size
    images = rng.uniform(0, 255, (num_images, size, size, 3)).astype("float32")
    if model.targets == "gt":
        return images, np.concatenate([boxes, classes[..., None]], -1)
    return images, encoded_targets(boxes, classes, model.anchors)


def fit_input(images, targets, batch_size):
    """``fit`` arguments for in-memory data: a cached ``tf.data`` dataset under TF."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return dict(x=images, y=targets, batch_size=batch_size)
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    data = tf.data.Dataset.from_tensor_slices((images, targets)).batch(batch_size)
    return dict(x=data.cache().with_options(options), shuffle=False)


def losses_for(model):
    """(SCB loss, MultiBox loss) for a detector (RefineDet: SCB on the ARM or not)."""
    if model.output_layout == "refinedet":
        from keras_scb.refinedet_loss import RefineDetLoss

        spec = model.anchor_spec
        return RefineDetLoss(spec), RefineDetLoss(spec, arm_weighting="uniform")
    from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss

    return ScaleBalancedLoss(), MultiBoxLoss()


def step_timer_class():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Seconds of each training step; reading the loss waits for the step
        (JAX dispatches asynchronously)."""

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer


def benchmark(name, precision, args):
    import keras

    from experiment_stats import format_median_interval, median_interval
    from keras_scb.models import build_detector

    step_timer = step_timer_class()

    keras.mixed_precision.set_global_policy(precision)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    models = {}
    for label in ("scb", "multibox"):
        keras.utils.set_random_seed(0)
        models[label] = build_detector(name, args.num_classes, backbone_weights=None)
    losses = losses_for(models["scb"])
    if args.control:
        losses = (losses[1], losses_for(models["multibox"])[1])
    for model, loss in zip(models.values(), losses):
        model.compile(
            optimizer=keras.optimizers.SGD(1e-4, momentum=0.9),
            loss=loss,
            jit_compile=jit,
        )
    n = args.steps * args.batch_size
    images, targets = synthetic_batch(models["scb"], n, seed=0)

    data = fit_input(images, targets, args.batch_size)

    def fit(model):
        """The median step time of one ``fit``: a step's own time, without the
        per-``fit`` set-up (iterator, callbacks), which made the ratio of short
        fits (SSDLite: 6 s) scatter by +-8 %."""
        timer = step_timer()
        model.fit(**data, epochs=1, verbose=0, callbacks=[timer])
        return statistics.median(timer.seconds)

    for model in models.values():
        fit(model)  # trace / compile
    seconds = {label: [] for label in models}
    for i in range(args.rounds):
        # Alternate which loss goes first: a fixed order biases the ratio.
        for label in list(models) if i % 2 == 0 else list(models)[::-1]:
            seconds[label].append(fit(models[label]))
    ratio = median_interval([s / m for s, m in zip(seconds["scb"], seconds["multibox"])])
    speed = {label: args.batch_size / statistics.median(t) for label, t in seconds.items()}
    params = models["scb"].count_params() / 1e6
    print(
        f"{name:<24} {precision:<15} {params:>7.2f}M {speed['scb']:>9.2f} "
        f"{speed['multibox']:>12.2f} {format_median_interval(ratio):>22}",
        flush=True,
    )
    keras.mixed_precision.set_global_policy("float32")


def main():
    args = parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from keras_scb.models import available_detectors

    print(
        f"backend={keras.backend.backend()} batch={args.batch_size} "
        f"steps={args.steps} rounds={args.rounds} jit_compile={args.jit_compile} "
        f"classes={args.num_classes}"
        + (" CONTROL: both copies MultiBox (A/A), columns as labelled" if args.control else "")
    )
    print(
        f"{'model':<24} {'precision':<15} {'params':>8} {'scb img/s':>9} "
        f"{'multibox img/s':>12} {'scb/mb time [95 % CI]':>22}"
    )
    for name in args.models.split(","):
        if name not in available_detectors():
            print(f"{name:<24} not registered; skipped")
            continue
        for precision in args.precisions.split(","):
            benchmark(name, precision, args)


if __name__ == "__main__":
    main()

"""How close a detector's training step is to this machine's arithmetic peak.

    python benchmarks/compute_bound.py [--models ssd300] [--batch-size 8]
        [--precisions float32,mixed_bfloat16] [--steps 2] [--rounds 3]

For each model it counts the floating-point operations of one training step
(forward, loss and gradients; TensorFlow's graph profiler on the traced step,
``2 * multiply-adds`` for convolutions and matrix products), measures the
machine's dense matrix-product rate (median of several ``4096 x 4096`` products
in the same precision as the convolutions run), times ``model.fit`` steps on
random data, and prints:

- GFLOP per training image,
- the achieved rate (GFLOP/s) and its fraction of the matrix-product rate,
- the images/second a step would reach at the matrix-product rate: an upper
  bound for any framework that performs the same operations in that precision
  (no Winograd or FFT convolutions), since no layer runs faster per FLOP than a
  large matrix product on a CPU.

This is the check behind a speed target such as "N x another framework":
if the bound is below the target, no implementation of the same network can
meet it on this machine. Every registered detector: SSD-style ones with
``ScaleBalancedLoss`` on encoded targets, RefineDet with its loss (SCB on the
ARM) on padded ground truth (`train_step.losses_for`, `train_step.synthetic_batch`).

The machine's matrix-product rate is not a constant: the same 2-core machine
measured about 400 GFLOP/s in its first sessions and 217 on 2026-11-30, which
halved every step rate; compare rates measured in one run only.
"""

import argparse
import os
import statistics
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ssd300")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed fit")
    parser.add_argument("--rounds", type=int, default=3, help="timed fits")
    parser.add_argument("--matmul-size", type=int, default=4096)
    return parser.parse_args()


def training_flops(model, loss, targets_shape):
    """Floating-point operations of one training step.

    Args:
        targets_shape: ``(B, ...)`` of the loss's ``y_true`` (``B`` images).
    """
    import tensorflow as tf

    size = model.image_size
    batch_size = targets_shape[0]

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            value = loss(targets, model(images, training=True))
        return tape.gradient(value, model.trainable_variables)

    graph = step.get_concrete_function(
        tf.TensorSpec((batch_size, size, size, 3), tf.float32),
        tf.TensorSpec(targets_shape, tf.float32),
    ).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def matmul_rate(precision, n, repeats=7):
    """Median GFLOP/s of an ``n x n`` by ``n x n`` product in the step's compute dtype."""
    import tensorflow as tf

    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    a = tf.random.uniform((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
    product(a)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).numpy()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_rate(model, batch_size, steps, rounds):
    """Median images/second of ``model.fit`` on `train_step.synthetic_batch` data."""
    from train_step import fit_input, synthetic_batch

    images, targets = synthetic_batch(model, steps * batch_size, seed=0)
    data = fit_input(images, targets, batch_size)
    model.fit(**data, epochs=1, verbose=0)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.fit(**data, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    return steps * batch_size / statistics.median(times)


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from keras_scb.models import build_detector
    from train_step import losses_for, synthetic_batch

    print(f"batch={args.batch_size} classes={args.num_classes} cpus={os.cpu_count()}")
    print(
        f"{'model':<14} {'precision':<15} {'GFLOP/img':>9} {'img/s':>7} "
        f"{'GFLOP/s':>8} {'matmul GFLOP/s':>14} {'fraction':>8} {'bound img/s':>11}"
    )
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            keras.mixed_precision.set_global_policy(precision)
            keras.utils.set_random_seed(0)
            model = build_detector(name, args.num_classes, backbone_weights=None)
            loss = losses_for(model)[0]
            _, targets = synthetic_batch(model, args.batch_size, seed=0)
            flops = training_flops(model, loss, targets.shape) / args.batch_size / 1e9
            model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), loss=loss)
            speed = step_rate(model, args.batch_size, args.steps, args.rounds)
            peak = matmul_rate(precision, args.matmul_size)
            achieved = flops * speed
            print(
                f"{name:<14} {precision:<15} {flops:>9.1f} {speed:>7.2f} {achieved:>8.1f} "
                f"{peak:>14.1f} {achieved / peak:>8.2f} {peak / flops:>11.2f}",
                flush=True,
            )
            keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    main()

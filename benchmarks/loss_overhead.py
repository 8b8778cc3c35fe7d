"""Forward+backward time of ScaleBalancedLoss vs MultiBoxLoss, interleaved, median ratio.

    python benchmarks/loss_overhead.py [--repeats 30] [--backend tensorflow|jax]

Shapes: (8, 8732, 25) (SSD300 VOC), (8, 8732, 85) (SSD300 COCO), (8, 24564, 25) (SSD512 VOC).
Targets come from real matching of random boxes (``benchmarks/synthetic.py``), so the
positives and M_i are realistic. The ratio column is the median of the
per-pair ratios with its distribution-free 95 % interval
(`experiment_stats.median_interval`): a ratio is "at most 1.01" when the
interval's upper end is.
"""

import argparse
import os
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    import numpy as np

    from keras_scb.anchors import get_anchors
    from experiment_stats import format_median_interval, median_interval
    from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
    from synthetic import encoded_targets, random_ground_truth

    def targets(preset, batch, num_classes, seed):
        rng = np.random.default_rng(seed)
        boxes, classes = random_ground_truth(rng, batch, num_classes)
        return encoded_targets(boxes, classes, get_anchors(preset))

    def timed_step(loss, y_true, y_pred):
        if keras.backend.backend() == "jax":
            import jax

            grad = jax.jit(jax.value_and_grad(lambda p: loss(y_true, p)))

            def run():
                value, g = grad(y_pred)
                g.block_until_ready()
        else:
            import tensorflow as tf

            y_pred_v = tf.Variable(y_pred)
            y_true_t = tf.constant(y_true)

            @tf.function
            def grad():
                with tf.GradientTape() as tape:
                    value = loss(y_true_t, y_pred_v)
                return value, tape.gradient(value, y_pred_v)

            def run():
                value, g = grad()
                g.numpy()

        run()  # compile / trace
        return run

    print(f"backend={keras.backend.backend()} repeats={args.repeats}")
    print(f"{'shape':<18} {'multibox ms':>12} {'scb ms':>9} {'ratio [95 % CI]':>22}")
    for preset, depth in (("ssd300", 25), ("ssd300", 85), ("ssd512", 25)):
        y_true = targets(preset, 8, depth - 5, seed=0)  # depth = 4 + C + 1
        rng = np.random.default_rng(1)
        y_pred = rng.normal(size=y_true.shape[:2] + (depth,)).astype("float32")
        runs = {
            "mb": timed_step(MultiBoxLoss(), y_true, y_pred),
            "scb": timed_step(ScaleBalancedLoss(), y_true, y_pred),
        }
        times = {"mb": [], "scb": []}
        ratios = []
        for i in range(args.repeats):
            order = ("mb", "scb") if i % 2 == 0 else ("scb", "mb")
            step = {}
            for name in order:
                start = time.perf_counter()
                runs[name]()
                step[name] = time.perf_counter() - start
                times[name].append(step[name])
            ratios.append(step["scb"] / step["mb"])
        shape = f"({y_true.shape[0]}, {y_true.shape[1]}, {depth})"
        print(
            f"{shape:<18} {1e3 * statistics.median(times['mb']):>12.2f} "
            f"{1e3 * statistics.median(times['scb']):>9.2f} {format_median_interval(median_interval(ratios)):>22}",
            flush=True,
        )


if __name__ == "__main__":
    main()

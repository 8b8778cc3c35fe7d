"""Where SCB's extra time goes: the matched-anchor counts M_i against the whole loss step.

    python benchmarks/scb_count_cost.py [--repeats 40] [--backend tensorflow|jax]

SCB differs from MultiBox only by `keras_scb.losses.positive_anchor_weights`
(``M_i`` and ``W_i`` per positive anchor). For the shapes of
``benchmarks/loss_overhead.py`` and RefineDet320's ARM, interleaved medians of:
  step         ScaleBalancedLoss forward + backward (as loss_overhead.py)
  call         a compiled function that returns its input: the cost of calling
               one, included in the next two columns but not in a step's share
  weights      positive_anchor_weights alone, compiled as the step is (TensorFlow
               graph: over the positive anchors only; JAX: a segment sum and a
               gather over all B * A anchors)
  weights_xla  (TensorFlow only) the same under ``jit_compile=True``, where it is
               dense (as under JAX)
Reported: milliseconds and (weights - call) / step, the most of a step SCB can add.
"""

import argparse
import os
import statistics
import time

# (anchor preset, logits incl. background); refinedet320 with 2 logits is its ARM,
# the branch SCB weights in the paper's RefineDet setting.
SHAPES = (("ssd300", 21), ("ssd300", 81), ("ssd512", 21), ("refinedet320", 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    import numpy as np

    from keras_scb.anchors import get_anchors
    from keras_scb.losses import ScaleBalancedLoss, positive_anchor_weights
    from synthetic import encoded_targets, random_ground_truth

    def targets(preset, depth, seed):
        """``(B, A, 6)`` targets of random boxes; ``depth == 2``: one "object" class (ARM)."""
        boxes, classes = random_ground_truth(
            np.random.default_rng(seed), args.batch, max(1, depth - 1))
        return encoded_targets(boxes, classes, get_anchors(preset))

    if keras.backend.backend() == "jax":
        import jax

        def compiled(fn, *inputs):
            jitted = jax.jit(fn)
            return lambda: jax.block_until_ready(jitted(*inputs))

        def step(loss, y_true, y_pred):
            return compiled(jax.grad(lambda p: loss(y_true, p)), y_pred)

        variants = {}
    else:
        import tensorflow as tf

        def compiled(fn, *inputs):
            inputs = [tf.constant(x) for x in inputs]
            traced = tf.function(fn)
            return lambda: traced(*inputs).numpy()

        def step(loss, y_true, y_pred):
            y_pred, y_true = tf.Variable(y_pred), tf.constant(y_true)

            @tf.function
            def grad():
                with tf.GradientTape() as tape:
                    value = loss(y_true, y_pred)
                return tape.gradient(value, y_pred)

            return lambda: grad().numpy()

        def compiled_xla(fn, *inputs):
            inputs = [tf.constant(x) for x in inputs]
            traced = tf.function(fn, jit_compile=True)
            return lambda: traced(*inputs).numpy()

        variants = {"weights_xla": compiled_xla}

    print(f"backend={keras.backend.backend()} batch={args.batch} repeats={args.repeats}")
    print(f"{'shape':<26}{'step ms':>9}{'call ms':>9}{'weights ms':>12}{'(w-call)/step':>15}"
          + "".join(f"{name + ' ms':>15}" for name in variants))
    for preset, depth in SHAPES:
        y_true = targets(preset, depth, seed=0)
        y_pred = np.random.default_rng(1).normal(size=y_true.shape[:2] + (4 + depth,))
        matched = y_true[..., 5].astype("int32")
        positive = y_true[..., 4] > 0
        runs = {
            "step": step(ScaleBalancedLoss(), y_true, y_pred.astype("float32")),
            "call": compiled(lambda m, p: p, matched, positive),
            "weights": compiled(positive_anchor_weights, matched, positive),
        }
        want = runs["weights"]()
        for name, compile_weights in variants.items():
            runs[name] = compile_weights(positive_anchor_weights, matched, positive)
            np.testing.assert_allclose(runs[name](), want, rtol=1e-6, err_msg=name)
        for run in runs.values():
            run()  # trace / compile
        times = {name: [] for name in runs}
        for i in range(args.repeats):
            for name in list(runs) if i % 2 == 0 else list(runs)[::-1]:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        shape = f"{preset} {y_true.shape[:2] + (4 + depth,)}"
        print(f"{shape:<26}{ms['step']:>9.2f}{ms['call']:>9.3f}{ms['weights']:>12.3f}"
              f"{(ms['weights'] - ms['call']) / ms['step']:>15.4f}"
              + "".join(f"{ms[name]:>15.3f}" for name in variants), flush=True)


if __name__ == "__main__":
    main()

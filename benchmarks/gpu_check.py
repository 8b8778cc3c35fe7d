"""One-call GPU check: the library's training step under JAX next to torchvision's SSD300.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py [--budget 450] [--batch-sizes 32,64]
    python benchmarks/gpu_check.py --smoke        # one tiny step on CPU (tested in CI)

For a GPU machine with JAX and PyTorch but no TensorFlow and no package registry:
install the wheels carried in ``.whl/`` first (``make gpu-wheels`` fills it on a
machine with a registry; see the README, "GPU check"). TensorFlow is never imported:
the script blocks the import, so a library change that needs TensorFlow on this
path fails here, not on the GPU machine.

What it runs, highest priority first, until ``--budget`` seconds are spent (every
row that did not fit is listed as skipped, never silently dropped):

- torchvision's ``ssd300_vgg16`` training step (``benchmarks/torchvision_peer.py``,
  a subprocess started before JAX takes the GPU) at each batch size, float32 and
  bfloat16 autocast;
- ``model.fit`` of SSD300 and MobileNetV2-SSDLite300 on synthetic device-resident
  data, for each precision (mixed_bfloat16, float32) and batch size, with
  ``ScaleBalancedLoss`` and ``MultiBoxLoss`` compiled side by side, one warm-up
  ``fit`` each (XLA compilation) and ``--rounds`` timed ``fit`` calls alternating
  between the two;
- training from images (``--augment-rows``, after the rows above): decoded uint8
  images resident on the accelerator, each with its colour parameters
  (`keras_scb.augment_on_device`) and padded ground truth, trained through
  ``AugmentOnDevice`` (colour in the step) with ``MatchOnDevice`` (matching in the
  step), timed against the same model on pre-encoded float targets: one row shows
  whether the step rate drops when the augmentation and matching move in.

Printed per row: images/second with each loss, the median SCB / MultiBox time
ratio, the XLA-counted FLOPs of one training image (forward + backward of the
loss, from ``jax.jit(...).lower(...).cost_analysis()``), the FLOP rate reached as
a fraction of the card's dense bf16 peak, and the ratio to torchvision's SSD300
at the same batch size and precision.
"""

import argparse
import importlib.abc
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("ssd300", "mobilenetv2-ssdlite300")
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data
# sheets, keyed by a substring of jax's device_kind.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny float32 step of SSDLite300 on the CPU")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precisions", default="mixed_bfloat16,float32")
    parser.add_argument("--batch-sizes", default="64,32")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed fit")
    parser.add_argument("--rounds", type=int, default=3, help="timed fits per loss")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds after which no new row is started")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak; default from the device name")
    parser.add_argument("--no-peer", action="store_true", help="skip torchvision")
    parser.add_argument("--augment-rows", default="ssd300",
                        help="models (comma-separated; empty: none) also trained from images "
                             "with device colour + matching, at each precision and batch size")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.precisions, args.batch_sizes = "mobilenetv2-ssdlite300", "float32", "2"
        args.steps, args.rounds, args.no_peer = 1, 1, True
        args.augment_rows = "mobilenetv2-ssdlite300"
        args.budget = float("inf")  # every row runs: the smoke test checks them all
    return args


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """An import hook that fails every ``import tensorflow``, as on a machine without it."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"gpu_check blocks {name}: the GPU machine has no TensorFlow.")
        return None


def block_tensorflow():
    """Makes ``import tensorflow`` fail, as on the GPU machine.

    An import hook rather than ``sys.modules["tensorflow"] = None``: Keras asks
    ``"tensorflow" in sys.modules`` to know whether it runs inside a TF graph, and
    that must stay false. Optional imports of TensorFlow inside Keras catch the
    ImportError; a hard dependency of the library on TensorFlow raises here.
    """
    if any(name == "tensorflow" or name.startswith("tensorflow.") for name in sys.modules):
        raise RuntimeError("tensorflow was imported before gpu_check could block it.")
    sys.meta_path.insert(0, _NoTensorFlow())


def run_peer(batch_sizes, steps):
    """torchvision's SSD300 img/s per (batch size, precision), from a subprocess."""
    results = {}
    for batch in batch_sizes:
        command = [
            sys.executable, os.path.join(HERE, "torchvision_peer.py"), "--device", "cuda",
            "--batch-size", str(batch), "--steps", str(steps), "--warmup", "3", "--json",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"torchvision peer failed at batch {batch}: {done.stderr.strip()[-500:]}")
            continue
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                results[(batch, row["precision"])] = row["images_per_second"]
        print(done.stdout.strip().splitlines()[0])
    return results


def device_batches(model, batch, steps):
    """``(images, targets)`` of ``batch * steps`` images on the accelerator: one random
    batch (`train_step.synthetic_batch`) repeated, so that no host transfer and no
    input pipeline is timed, only the training step."""
    import jax
    import numpy as np

    sys.path.insert(0, HERE)
    from train_step import synthetic_batch

    images, targets = synthetic_batch(model, batch, seed=0)
    return (
        jax.device_put(np.repeat(images, steps, axis=0)),
        jax.device_put(np.repeat(targets, steps, axis=0)),
    )


def colour_params(rng, n):
    """``(n, NUM_PARAMS)`` colour parameters with `augment.sample_photometric`'s
    distributions (numpy: TensorFlow is blocked here) and the whole image as window."""
    import numpy as np

    from keras_scb.augment_on_device import NUM_PARAMS

    coins = rng.uniform(size=(n, 5)) < 0.5
    params = np.zeros((n, NUM_PARAMS), np.float32)
    params[:, 0] = np.where(coins[:, 0], rng.uniform(-32, 32, n), 0.0)
    params[:, 1] = np.where(coins[:, 1], rng.uniform(0.5, 1.5, n), 1.0)
    params[:, 2], params[:, 4], params[:, 6] = coins[:, 4], coins[:, 2], coins[:, 3]
    params[:, 3] = rng.uniform(0.5, 1.5, n)
    params[:, 5] = rng.uniform(-0.05, 0.05, n)
    params[:, 9:] = 1.0  # window [0, 0, 1, 1]
    return params


def image_batches(model, batch, steps):
    """``((images uint8, params), ground truth (N, G, 5))`` of ``batch * steps`` images
    on the accelerator: what ``training_pipeline(..., targets="gt",
    photometric="device")`` feeds, decoded and resized, without a host in the loop."""
    import jax
    import numpy as np

    sys.path.insert(0, HERE)
    from synthetic import random_ground_truth

    rng = np.random.default_rng(0)
    n = batch * steps
    boxes, classes = random_ground_truth(rng, n, model.num_classes)
    size = model.image_size
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ground_truth = np.concatenate([boxes, classes[..., None].astype(np.float32)], -1)
    return (
        (jax.device_put(images), jax.device_put(colour_params(rng, n))),
        jax.device_put(ground_truth),
    )


def flops_per_image(model, loss, images, targets):
    """XLA's FLOP count of the loss's value and gradient, divided by the batch size
    (``images`` may be a tuple of inputs, the images first)."""
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_of(trainable, non_trainable, x, y):
        predictions, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss(y, predictions)

    lowered = jax.jit(jax.value_and_grad(loss_of)).lower(trainable, non_trainable, images, targets)
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    batch = (images[0] if isinstance(images, tuple) else images).shape[0]
    return float(cost["flops"]) / batch


def bench_row(name, precision, batch, args):
    """Times SCB vs MultiBox ``fit`` for one model, precision and batch size."""
    import keras

    from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
    from keras_scb.models import build_detector

    keras.mixed_precision.set_global_policy(precision)
    losses = {"scb": ScaleBalancedLoss(), "multibox": MultiBoxLoss()}
    models = {}
    for label, loss in losses.items():
        keras.utils.set_random_seed(0)
        model = build_detector(name, args.num_classes, backbone_weights=None)
        model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), loss=loss,
                      jit_compile=True)
        models[label] = model
    x, y = device_batches(models["scb"], batch, args.steps)

    def fit(model):
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return time.perf_counter() - start

    for model in models.values():
        fit(model)  # XLA compilation
    seconds = {label: [] for label in models}
    for _ in range(args.rounds):
        for label, model in models.items():
            seconds[label].append(fit(model))
    flops = flops_per_image(models["scb"], losses["scb"], x[:batch], y[:batch])
    keras.mixed_precision.set_global_policy("float32")
    n = batch * args.steps
    return {
        "model": name,
        "precision": precision,
        "batch": batch,
        "scb": n / statistics.median(seconds["scb"]),
        "multibox": n / statistics.median(seconds["multibox"]),
        "ratio": statistics.median(s / m for s, m in zip(seconds["scb"], seconds["multibox"])),
        "gflop_per_image": flops / 1e9,
    }


def augment_row(name, precision, batch, args):
    """Times ``fit`` from images (device colour + matching) against pre-encoded targets."""
    import keras

    from keras_scb.augment_on_device import AugmentOnDevice
    from keras_scb.losses import ScaleBalancedLoss
    from keras_scb.models import build_detector
    from keras_scb.on_device import MatchOnDevice

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    plain = build_detector(name, args.num_classes, backbone_weights=None)
    plain.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), loss=ScaleBalancedLoss(),
                  jit_compile=True)
    keras.utils.set_random_seed(0)
    detector = build_detector(name, args.num_classes, backbone_weights=None)
    wrapped = AugmentOnDevice(detector)
    loss = MatchOnDevice(ScaleBalancedLoss(), detector.anchor_spec)
    wrapped.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), loss=loss,
                    jit_compile=True)
    data = {"encoded": (plain, *device_batches(plain, batch, args.steps)),
            "images": (wrapped, *image_batches(detector, batch, args.steps))}

    def fit(model, x, y):
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return time.perf_counter() - start

    for model, x, y in data.values():
        fit(model, x, y)  # XLA compilation
    seconds = {label: [] for label in data}
    for _ in range(args.rounds):
        for label, (model, x, y) in data.items():
            seconds[label].append(fit(model, x, y))
    (x_images, params), gt = data["images"][1:]
    flops = flops_per_image(wrapped, loss, (x_images[:batch], params[:batch]), gt[:batch])
    keras.mixed_precision.set_global_policy("float32")
    n = batch * args.steps
    return {
        "model": name, "precision": precision, "batch": batch,
        "encoded": n / statistics.median(seconds["encoded"]),
        "images": n / statistics.median(seconds["images"]),
        "ratio": statistics.median(
            i / e for i, e in zip(seconds["images"], seconds["encoded"])),
        "gflop_per_image": flops / 1e9,
    }


def peak_tflops(args):
    import jax

    if args.peak_tflops:
        return args.peak_tflops
    kind = jax.devices()[0].device_kind
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in kind), None)


def format_row(row, peak, peer):
    tflops = row["scb"] * row["gflop_per_image"] / 1e3
    fraction = f"{tflops / peak:.3f}" if peak else "n/a"
    peer_precision = "bfloat16" if row["precision"] == "mixed_bfloat16" else "float32"
    torch_speed = peer.get((row["batch"], peer_precision)) if row["model"] == "ssd300" else None
    versus = f"{row['scb'] / torch_speed:.2f}" if torch_speed else "n/a"
    return (
        f"{row['model']:<24} {row['precision']:<15} {row['batch']:>5} {row['scb']:>9.1f} "
        f"{row['multibox']:>9.1f} {row['ratio']:>7.3f} {row['gflop_per_image']:>8.1f} "
        f"{tflops:>8.1f} {fraction:>9} {versus:>9}"
    )


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    block_tensorflow()
    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
        sys.exit(f"gpu_check runs under JAX; KERAS_BACKEND is {os.environ['KERAS_BACKEND']}.")
    # Both JAX and the torchvision subprocess use the card: JAX must not reserve it all.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    peer = {} if args.no_peer else run_peer(batch_sizes, args.steps)

    import jax
    import keras

    peak = peak_tflops(args)
    device = jax.devices()[0]
    print(f"jax={jax.__version__} keras={keras.__version__} device={device.device_kind} "
          f"({device.platform}) bf16 peak={peak} TFLOP/s steps={args.steps} rounds={args.rounds}")
    print(f"{'model':<24} {'precision':<15} {'batch':>5} {'scb img/s':>9} {'mb img/s':>9} "
          f"{'scb/mb':>7} {'GFLOP/im':>8} {'TFLOP/s':>8} {'of peak':>9} {'x torch':>9}")
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            for batch in batch_sizes:
                if time.perf_counter() - start > args.budget:
                    print(f"{name:<24} {precision:<15} {batch:>5} skipped: --budget spent")
                    continue
                print(format_row(bench_row(name, precision, batch, args), peak, peer), flush=True)
    augment_models = [m for m in args.augment_rows.split(",") if m]
    if augment_models:
        print("training from images, colour + matching in the step (augment_on_device, "
              "MatchOnDevice) vs pre-encoded targets:")
        print(f"{'images+aug':<11}{'model':<24} {'precision':<15} {'batch':>5} "
              f"{'img/s':>9} {'encoded':>9} {'time x':>7} {'GFLOP/im':>8}")
    for name in augment_models:
        for precision in args.precisions.split(","):
            for batch in batch_sizes:
                if time.perf_counter() - start > args.budget:
                    print(f"{'images+aug':<11}{name:<24} {precision:<15} {batch:>5} "
                          "skipped: --budget spent")
                    continue
                row = augment_row(name, precision, batch, args)
                print(f"{'images+aug':<11}{name:<24} {precision:<15} {batch:>5} "
                      f"{row['images']:>9.1f} {row['encoded']:>9.1f} {row['ratio']:>7.3f} "
                      f"{row['gflop_per_image']:>8.1f}", flush=True)
    for (batch, precision), speed in sorted(peer.items()):
        print(f"torchvision ssd300_vgg16 {precision:<15} {batch:>5} {speed:>9.1f} img/s")
    print(f"total {time.perf_counter() - start:.0f} s; tensorflow imported: "
          f"{'tensorflow' in sys.modules}")


if __name__ == "__main__":
    main()

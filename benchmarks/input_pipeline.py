"""Images/second of the input pipelines by stage, and of on-device matching; interleaved medians.

    python benchmarks/input_pipeline.py [--threads 1] [--anchors ssd300,ssd512]
        [--dataset bccd,coco] [--repeats 5] [--batches 10] [--split trainval]

Per core: ``--threads 1`` runs every ``tf.data`` map in a one-thread pool and
TensorFlow's ops on one thread. Run it under ``taskset -c 0`` on an idle machine:
that also pins XLA's own thread pool (the on-device matching under JAX).

Variants, each timed once per repeat in turn (fresh iterator, 2 warm-up batches),
for each anchor preset (which sets the image size):
  decode      JPEG decode + resize only (training pipeline, augment=None, gt targets)
  train_gt    decode + SSD augmentation, padded ground truth out (``targets="gt"``)
  train       decode + SSD augmentation + anchor matching/encoding (``targets="ssd"``)
  fast        the fastest configuration: ``decode="window", photometric="device",
              targets="gt"``: the draws first, only the window's JPEG pixels decoded,
              one resample, flip; colour and matching left to the train step
  floor       the draws and the window's JPEG decode alone (what ``fast`` cannot undercut)
  match_dev   the jitted ``keras.ops`` matching of `keras_scb.on_device` on a batch of
              the padded ground truth, on the CPU (what ``--match_on=device`` moves
              into the train step; on a GPU it runs there)
  validation  decode + resize + padded ground truth, in order (--validation)
Once per preset size: ``colour_dev``, `keras_scb.augment_on_device.photometric` on a
batch, jitted under JAX's XLA on the CPU (a child process; an upper bound of what
the colour adds to a GPU step), with XLA's FLOP count per image next to SSD300's
training FLOPs (208 GFLOP per image, ``benchmarks/gpu_check.py``).

``--clock cpu`` times the pipelines by the process's CPU time: on a machine that
other work keeps busy, per-core costs stay close to the idle ones where wall time
does not (the main thread only waits for the map's one thread).

Stage costs per image are differences of the medians: decode = 1 / decode,
augment = 1 / train_gt - 1 / decode, encode = 1 / train - 1 / train_gt.
Cores a GPU step rate R needs (per-core rates, i.e. --threads 1):
  CPU matching:       R / train     = R * (decode + augment + encode) seconds per image
  on-device matching: R / train_gt  = R * (decode + augment) seconds per image
  fastest configuration: R * fast seconds per image
(on-device matching and colour instead add their cost per image on the accelerator
to the step). The last line reads ``host_ms_per_image=<ms> cores_for_2650=<cores>``
for the fastest configuration on the first dataset and preset (by default SSD300
on BCCD), the ``--gpu_rate`` in the key.
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

SSD300_TRAIN_GFLOP = 208.0  # per image, forward + backward (gpu_check.py's XLA count)


def _images_in(batch):
    """The batch size of ``(images, targets)``, ``((images, params), targets)`` or ``images``."""
    while isinstance(batch, tuple):
        batch = batch[0]
    return len(batch)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _rate(iterator, batches, clock=time.perf_counter):
    """Images per second over ``batches`` batches (the last one of a pass may be short)."""
    start = clock()
    images = sum(_images_in(next(iterator)) for _ in range(batches))
    return images / (clock() - start)


def _single_thread(dataset):
    """``dataset`` with every map on one thread: the pipeline's throughput per core."""
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def _device_matcher(anchors):
    """The on-device matching of one ``(B, G, 5)`` batch, compiled, as a timed callable."""
    import keras

    from keras_scb.anchors import get_anchors
    from keras_scb.on_device import encode_ground_truth

    anchors = get_anchors(anchors)
    if keras.backend.backend() == "jax":
        import jax

        encode = jax.jit(lambda y: encode_ground_truth(y, anchors))
        return lambda y: encode(y).block_until_ready()
    import tensorflow as tf

    encode = tf.function(lambda y: encode_ground_truth(y, anchors), jit_compile=True)
    return lambda y: encode(y).numpy()


def _match_rate(match, batches, repeat):
    """Images per second of ``match`` over the ground-truth ``batches``, ``repeat`` times."""
    start = time.perf_counter()
    for _ in range(repeat):
        for batch in batches:
            match(batch)
    return repeat * sum(len(b) for b in batches) / (time.perf_counter() - start)


def window_decode_floor(dataset, anchors, batch_size):
    """The draws and the JPEG decode of the window's region only, batched as one list
    of ragged pixels: the host work the fastest configuration cannot avoid."""
    import numpy as np
    import tensorflow as tf

    from keras_scb.anchors import get_anchor_spec
    from keras_scb.data import augment

    size = get_anchor_spec(anchors).image_size
    records = dataset.records
    lengths = [len(r.classes) for r in records]
    are_paths = isinstance(records[0].image, str)
    elements = tf.data.Dataset.from_tensor_slices({
        "image": [r.image for r in records],
        "boxes": tf.RaggedTensor.from_row_lengths(
            np.concatenate([r.boxes for r in records]).astype(np.float32), lengths),
        "classes": tf.RaggedTensor.from_row_lengths(
            np.concatenate([r.classes for r in records]).astype(np.int32), lengths),
    })
    elements = tf.data.Dataset.zip(elements, tf.data.Dataset.random(seed=0).batch(2))

    def decode_window(element, seed):
        data = tf.io.read_file(element["image"]) if are_paths else element["image"]
        image_hw = tf.image.extract_jpeg_shape(data)[:2]
        draws = augment.sample_augmentation(element["boxes"], element["classes"], image_hw, seed)
        region, _ = augment.read_region(draws.window, image_hw, size)
        return tf.reduce_sum(tf.shape(tf.image.decode_and_crop_jpeg(data, region, channels=3)))

    return (elements.repeat().map(decode_window, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def device_colour_cost(size, batch, repeat=20):
    """``(ms per image, FLOPs per image)`` of the jitted device colour on the CPU.

    Runs in a child process under JAX (XLA's CPU backend and its FLOP count),
    pinned like this one (``taskset`` is inherited).
    """
    code = (
        "import json, sys; sys.path.insert(0, {root!r});"
        "from input_pipeline import _colour_cost_here; print(json.dumps(_colour_cost_here({a})))"
    ).format(root=os.path.dirname(os.path.abspath(__file__)), a=f"{size}, {batch}, {repeat}")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"device colour timing failed: {done.stderr.strip()[-1000:]}")
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def _colour_cost_here(size, batch, repeat):
    """`device_colour_cost` inside the JAX child process."""
    import jax
    import numpy as np

    from keras_scb.augment_on_device import NUM_PARAMS, photometric

    rng = np.random.default_rng(0)
    images = jax.device_put(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    params = np.zeros((batch, NUM_PARAMS), np.float32)
    params[:, [1, 3]] = 1.2  # contrast, saturation factors
    params[:, [2, 4, 6]] = 1.0  # contrast first, saturation and hue on
    params[:, 5] = 0.03  # hue shift
    params[:, 9:] = 1.0  # the window: the whole image
    params = jax.device_put(params)
    colour = jax.jit(photometric)
    cost = colour.lower(images, params).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    colour(images, params).block_until_ready()  # compile
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            colour(images, params).block_until_ready()
        times.append((time.perf_counter() - start) / (repeat * batch))
    return 1e3 * statistics.median(times), float(cost["flops"]) / batch


def benchmark(dataset, anchors, args):
    """Rates ``{variant: [img/s per repeat]}`` for one anchor preset."""
    import numpy as np

    from keras_scb import data

    common = dict(batch_size=args.batch_size, seed=0, repeat=True)
    pipelines = {
        "decode": data.training_pipeline(dataset, anchors, targets="gt", augment=None, **common),
        "train_gt": data.training_pipeline(dataset, anchors, targets="gt", **common),
        "train": data.training_pipeline(dataset, anchors, **common),
        "fast": data.training_pipeline(
            dataset, anchors, targets="gt", decode="window", photometric="device", **common),
        "floor": window_decode_floor(dataset, anchors, args.batch_size),
    }
    if args.validation:
        pipelines["validation"] = data.validation_pipeline(
            dataset, anchors, batch_size=args.batch_size).repeat()
    if args.threads == 1:
        pipelines = {name: _single_thread(p) for name, p in pipelines.items()}
    ground_truth = [np.asarray(gt) for _, gt in pipelines["train_gt"].take(args.batches)]
    match = _device_matcher(anchors)
    match(ground_truth[0])  # compile
    rates = {name: [] for name in (*pipelines, "match_dev")}
    for _ in range(args.repeats):
        for name, pipeline in pipelines.items():
            # A fresh iterator per run, dropped afterwards: a live one keeps
            # prefetching in the background and would steal the CPUs of the next.
            iterator = iter(pipeline)
            _rate(iterator, 2)  # warm-up: thread pools, file cache
            rates[name].append(_rate(iterator, args.batches, CLOCKS[args.clock]))
            del iterator
            gc.collect()
        rates["match_dev"].append(_match_rate(match, ground_truth, 1))
    return rates, ground_truth[0].shape[1]


def report(rates, anchors, max_boxes, args):
    import keras

    from keras_scb.anchors import get_anchors

    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\nanchors {anchors} ({len(get_anchors(anchors))}), padded to {max_boxes} boxes, "
          f"on-device matching under {keras.backend.backend()} (XLA) on the CPU")
    print(f"{'variant':<12}{'median img/s':>14}{'min':>8}{'max':>8}")
    for name, values in rates.items():
        print(f"{name:<12}{median[name]:>14.1f}{min(values):>8.1f}{max(values):>8.1f}")
    ms = {
        "decode": 1e3 / median["decode"],
        "augment": 1e3 / median["train_gt"] - 1e3 / median["decode"],
        "encode (CPU matching)": 1e3 / median["train"] - 1e3 / median["train_gt"],
        "on-device matching, on CPU": 1e3 / median["match_dev"],
    }
    threads = args.threads or os.cpu_count()
    print(f"per image, {threads} thread(s): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    ways = (
        ("CPU matching", median["train"]),
        ("on-device matching", median["train_gt"]),
        ("the fastest configuration (window decode, colour + matching on device)", median["fast"]),
    )
    for way, rate in ways:
        cores = args.gpu_rate * threads / rate
        print(f"cores for {args.gpu_rate:.0f} img/s with {way}: {args.gpu_rate:.0f} / "
              f"({rate:.1f} / {threads}) = {cores:.1f}"
              + ("" if args.threads == 1 else " (assumes linear scaling; use --threads 1)"))
    fast_ms, floor_ms = 1e3 * threads / median["fast"], 1e3 * threads / median["floor"]
    print(f"fastest configuration: {fast_ms:.2f} ms per image per core, of which the floor "
          f"(draws + JPEG decode of the window alone) {floor_ms:.2f} ms; reference path "
          f"(train_gt) {1e3 * threads / median['train_gt']:.2f} ms, "
          f"ratio fast / reference {median['train_gt'] / median['fast']:.2f}")
    return fast_ms, args.gpu_rate * fast_ms / 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dataset", default="bccd",
                        help="comma-separated: bccd (vendored BCCD 640x480, ~13.5 "
                             "boxes/image), coco (the vendored COCO val2017 subset)")
    parser.add_argument("--split", default=None, help="default: trainval (bccd), val2017 (coco)")
    parser.add_argument("--anchors", default="ssd300", help="comma-separated presets")
    parser.add_argument("--threads", type=int, default=0,
                        help="1: one thread for tf.data and TF ops (per-core rates); 0: all cores")
    parser.add_argument("--gpu_rate", type=float, default=2650.0,
                        help="GPU train-step rate (img/s) to size the CPU side for")
    parser.add_argument("--validation", action="store_true", help="also time the validation pipeline")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="cpu: the process's CPU time instead of wall time, for the "
                             "pipelines (with --threads 1 on a loaded machine)")
    parser.add_argument("--no-device-colour", dest="device_colour", action="store_false",
                        help="skip the JAX child process timing the device colour")
    args = parser.parse_args()
    datasets = args.dataset.split(",")
    unknown = sorted(set(datasets) - {"bccd", "coco"})
    if unknown:
        parser.error(f"--dataset: unknown {', '.join(unknown)}; choose from bccd, coco.")
    if args.split and len(datasets) > 1:
        parser.error("--split goes with one --dataset.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from keras_scb import data

    from keras_scb.anchors import get_anchor_spec

    presets = args.anchors.split(",")
    summary = []
    for name in datasets:
        split = args.split or ("trainval" if name == "bccd" else "val2017")
        dataset = (data.load_bccd if name == "bccd" else data.load_coco_subset)(split)
        boxes = sum(len(r.classes) for r in dataset.records) / len(dataset)
        print(f"\n{name} {split}: {len(dataset)} images, {boxes:.1f} boxes/image, "
              f"batch {args.batch_size}, {args.repeats} x {args.batches} batches, "
              f"threads {args.threads or 'all'} of {os.cpu_count()} CPUs, TF {tf.__version__}")
        for anchors in presets:
            rates, max_boxes = benchmark(dataset, anchors, args)
            summary.append((name, anchors, *report(rates, anchors, max_boxes, args)))
    if args.device_colour:
        print(f"\ndevice colour (augment_on_device.photometric), jitted, JAX XLA on the CPU, "
              f"batch {args.batch_size}:")
        for anchors in presets:
            size = get_anchor_spec(anchors).image_size
            ms, flops = device_colour_cost(size, args.batch_size)
            print(f"  {size} px: {ms:.3f} ms per image, {flops / 1e6:.1f} MFLOP per image = "
                  f"{100 * flops / (SSD300_TRAIN_GFLOP * 1e9):.3f} % of SSD300's "
                  f"{SSD300_TRAIN_GFLOP:.0f} GFLOP training image")
    print(f"\nfastest configuration, per core, {args.gpu_rate:.0f} img/s:")
    for name, anchors, ms, cores in summary:
        print(f"  {name:<6}{anchors:<10}host {ms:6.2f} ms per image   cores {cores:6.1f}")
    _, _, ms, cores = summary[0]
    print(f"host_ms_per_image={ms:.3f} cores_for_{args.gpu_rate:.0f}={cores:.3f}")


if __name__ == "__main__":
    main()

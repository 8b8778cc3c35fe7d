"""Images/second of the input pipelines by stage, and of on-device matching; interleaved medians.

    python benchmarks/input_pipeline.py [--threads 1] [--anchors ssd300,ssd512]
        [--dataset bccd|coco] [--repeats 5] [--batches 10] [--split trainval]

Per core: ``--threads 1`` runs every ``tf.data`` map in a one-thread pool and
TensorFlow's ops on one thread. Run it under ``taskset -c 0`` on an idle machine:
that also pins XLA's own thread pool (the on-device matching under JAX).

Variants, each timed once per repeat in turn (fresh iterator, 2 warm-up batches),
for each anchor preset (which sets the image size):
  decode      JPEG decode + resize only (training pipeline, augment=None, gt targets)
  train_gt    decode + SSD augmentation, padded ground truth out (``targets="gt"``)
  train       decode + SSD augmentation + anchor matching/encoding (``targets="ssd"``)
  match_dev   the jitted ``keras.ops`` matching of `keras_scb.on_device` on a batch of
              the padded ground truth, on the CPU (what ``--match_on=device`` moves
              into the train step; on a GPU it runs there)
  validation  decode + resize + padded ground truth, in order (--validation)

Stage costs per image are differences of the medians: decode = 1 / decode,
augment = 1 / train_gt - 1 / decode, encode = 1 / train - 1 / train_gt.
Cores a GPU step rate R needs (per-core rates, i.e. --threads 1):
  CPU matching:       R / train     = R * (decode + augment + encode) seconds per image
  on-device matching: R / train_gt  = R * (decode + augment) seconds per image
(on-device matching instead adds its cost per image on the accelerator to the step).
"""

import argparse
import gc
import os
import statistics
import time


def _rate(iterator, batches):
    """Images per second over ``batches`` batches (the last one of a pass may be short)."""
    start = time.perf_counter()
    images = sum(len(next(iterator)[0]) for _ in range(batches))
    return images / (time.perf_counter() - start)


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


def benchmark(dataset, anchors, args):
    """Rates ``{variant: [img/s per repeat]}`` for one anchor preset."""
    import numpy as np

    from keras_scb import data

    common = dict(batch_size=args.batch_size, seed=0, repeat=True)
    pipelines = {
        "decode": data.training_pipeline(dataset, anchors, targets="gt", augment=None, **common),
        "train_gt": data.training_pipeline(dataset, anchors, targets="gt", **common),
        "train": data.training_pipeline(dataset, anchors, **common),
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
            rates[name].append(_rate(iterator, args.batches))
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
    for way, rate in (("CPU matching", median["train"]), ("on-device matching", median["train_gt"])):
        cores = args.gpu_rate * threads / rate
        print(f"cores for {args.gpu_rate:.0f} img/s with {way}: {args.gpu_rate:.0f} / "
              f"({rate:.1f} / {threads}) = {cores:.1f}"
              + ("" if args.threads == 1 else " (assumes linear scaling; use --threads 1)"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dataset", default="bccd", choices=("bccd", "coco"),
                        help="bccd: vendored BCCD 640x480, ~13.5 boxes/image; "
                             "coco: the vendored COCO val2017 subset")
    parser.add_argument("--split", default=None, help="default: trainval (bccd), val2017 (coco)")
    parser.add_argument("--anchors", default="ssd300", help="comma-separated presets")
    parser.add_argument("--threads", type=int, default=0,
                        help="1: one thread for tf.data and TF ops (per-core rates); 0: all cores")
    parser.add_argument("--gpu_rate", type=float, default=2650.0,
                        help="GPU train-step rate (img/s) to size the CPU side for")
    parser.add_argument("--validation", action="store_true", help="also time the validation pipeline")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from keras_scb import data

    split = args.split or ("trainval" if args.dataset == "bccd" else "val2017")
    load = data.load_bccd if args.dataset == "bccd" else data.load_coco_subset
    dataset = load(split)
    boxes = sum(len(r.classes) for r in dataset.records) / len(dataset)
    print(f"{args.dataset} {split}: {len(dataset)} images, {boxes:.1f} boxes/image, "
          f"batch {args.batch_size}, {args.repeats} x {args.batches} batches, "
          f"threads {args.threads or 'all'} of {os.cpu_count()} CPUs, TF {tf.__version__}")
    for anchors in args.anchors.split(","):
        rates, max_boxes = benchmark(dataset, anchors, args)
        report(rates, anchors, max_boxes, args)


if __name__ == "__main__":
    main()

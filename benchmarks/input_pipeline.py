"""Images/second of the input pipelines on BCCD, interleaved runs, medians.

    python benchmarks/input_pipeline.py [--repeats 5] [--batches 10] [--split trainval]

Variants, each timed once per repeat in turn (fresh iterator, 2 warm-up batches):
  train       decode + SSD augmentation + "ssd300" target encoding (8732 priors), batch 32
  train_gt    the same without anchor matching (padded ground truth), to split the cost
  decode      JPEG decode + resize only (training pipeline with augment=None, gt targets)
  validation  decode + resize + padded ground truth, in order
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--anchors", default="ssd300")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf

    from keras_scb import data

    dataset = data.load_bccd(args.split)
    common = dict(batch_size=args.batch_size, seed=0, repeat=True)
    pipelines = {
        "train": data.training_pipeline(dataset, args.anchors, **common),
        "train_gt": data.training_pipeline(dataset, args.anchors, targets="gt", **common),
        "decode": data.training_pipeline(
            dataset, args.anchors, targets="gt", augment=None, **common),
        "validation": data.validation_pipeline(
            dataset, args.anchors, batch_size=args.batch_size).repeat(),
    }
    rates = {name: [] for name in pipelines}
    for _ in range(args.repeats):
        for name, pipeline in pipelines.items():
            # A fresh iterator per run, dropped afterwards: a live one keeps
            # prefetching in the background and would steal the CPUs of the next.
            iterator = iter(pipeline)
            _rate(iterator, 2)  # warm-up: thread pools, autotuning, file cache
            rates[name].append(_rate(iterator, args.batches))
            del iterator
            gc.collect()

    print(f"BCCD {args.split}: {len(dataset)} images 640x480, anchors {args.anchors}, "
          f"batch {args.batch_size}, {args.repeats} x {args.batches} batches, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}")
    print(f"{'variant':<12}{'median img/s':>14}{'min':>8}{'max':>8}")
    for name, values in rates.items():
        print(f"{name:<12}{statistics.median(values):>14.1f}{min(values):>8.1f}{max(values):>8.1f}")
    ratio = statistics.median(a / b for a, b in zip(rates["train"], rates["train_gt"]))
    print(f"train / train_gt (median of per-repeat ratios; 1 - this = matching's share): {ratio:.2f}")


if __name__ == "__main__":
    main()

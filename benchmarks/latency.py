"""Per-image latency on this CPU: Keras vs TFLite fp32 / fp16 / int8 vs ONNX, 1 and 2 threads.

    python benchmarks/latency.py [--models mobilenetv2-ssdlite300,ssd300] [--rounds 5]

Batch 1, the model's input size, post-processing included (the SSD decoder's
defaults: score 0.01, IoU 0.45, 200 detections, 400 candidates per class).
Keras: ``predict_on_batch`` of `keras_scb.postprocess.build_inference_model`, in a
subprocess per thread count (TensorFlow fixes its thread pools at start-up).
TFLite: the `exporters.tflite` file in the LiteRT interpreter (XNNPACK), the
precisions interleaved round by round. ONNX (with the ``onnx`` extra, else left
out): the `exporters.onnx` fp32 file, and tf2onnx's conversion of the int8 TFLite
file (QDQ; measured to see whether an int8 ONNX path would pay, not offered), in
onnxruntime's CPU session, interleaved with the TFLite files. Medians in
milliseconds.

Weights: the builders' defaults (MobileNetV2's ImageNet weights, random heads;
SSD300 random), so every anchor passes the 0.01 score threshold and the NMS
works at its maximum load; a trained model's NMS does less. The ``network``
column times the TFLite fp32 network without post-processing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PRECISIONS = ("fp32", "fp16", "int8")


def _timed(function, rounds, runs):
    times = []
    for _ in range(rounds * runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def keras_worker(model, num_classes, threads, rounds, runs):
    """Run in a fresh process: median ms of Keras ``predict_on_batch`` at ``threads``."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import numpy as np

    from keras_scb.models import build_detector
    from keras_scb.postprocess import build_inference_model

    detector = build_detector(model, num_classes)
    inference = build_inference_model(detector)
    size = detector.image_size
    image = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    for _ in range(3):
        inference.predict_on_batch(image)
    return _timed(lambda: inference.predict_on_batch(image), rounds, runs)


class OnnxSession:
    """An ONNX model in onnxruntime's CPU session, run on one uint8 input (for timing)."""

    def __init__(self, model, num_threads):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def invoke(self, image):
        self.session.run(None, {self.input: image})


def onnx_files(detector, int8_tflite):
    """``{"onnx": the exporters.onnx fp32 model, "onnx int8": tf2onnx's conversion of
    the int8 TFLite file}`` as bytes; ``{}`` without the onnx extra."""
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx
    except ImportError:
        return {}
    from exporters import onnx

    files = {"onnx": onnx.convert(detector, "fp32").SerializeToString()}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "int8.tflite")
        with open(path, "wb") as f:
            f.write(int8_tflite)
        model, _ = tf2onnx.convert.from_tflite(path, opset=onnx.OPSET)
    files["onnx int8"] = model.SerializeToString()
    return files


def tflite_medians(model, num_classes, threads, rounds, runs):
    """``{(variant, threads): median ms}`` for the TFLite precisions, the bare network
    and the ONNX files (`onnx_files`)."""
    import keras
    import numpy as np

    from exporters import tflite
    from exporters.runtime import TFLiteDetector
    from keras_scb.models import build_detector

    keras.utils.set_random_seed(0)
    detector = build_detector(model, num_classes)
    size = detector.image_size
    representative = tflite.representative_images("synthetic", size, 16)
    files = {p: tflite.convert(detector, p, representative) for p in PRECISIONS}
    files["network"] = tflite.convert(detector, "fp32", postprocess=False)
    onnx_models = onnx_files(detector, files["int8"])
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    medians = {}
    for num_threads in threads:
        runners = {name: TFLiteDetector(data, num_threads) for name, data in files.items()}
        runners.update({name: OnnxSession(data, num_threads) for name, data in onnx_models.items()})
        times = {name: [] for name in runners}
        for runner in runners.values():
            for _ in range(3):
                runner.invoke(image)
        names = list(runners)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                for _ in range(runs):
                    start = time.perf_counter()
                    runners[name].invoke(image)
                    times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            medians[(name, num_threads)] = statistics.median(values) * 1e3
    return medians


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2-ssdlite300,ssd300")
    parser.add_argument("--num_classes", type=int, default=20, help="VOC: 20")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs_per_round", type=int, default=4)
    parser.add_argument("--keras_worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    threads = [int(t) for t in args.threads.split(",")]
    if args.keras_worker:
        ms = keras_worker(args.keras_worker, args.num_classes, threads[0], args.rounds, args.runs_per_round)
        print(json.dumps({"median_ms": ms}))
        return

    rows = []
    for model in args.models.split(","):
        medians = tflite_medians(model, args.num_classes, threads, args.rounds, args.runs_per_round)
        for num_threads in threads:
            done = subprocess.run(
                [sys.executable, __file__, f"--keras_worker={model}", f"--threads={num_threads}",
                 f"--num_classes={args.num_classes}", f"--rounds={args.rounds}",
                 f"--runs_per_round={args.runs_per_round}"],
                capture_output=True, text=True, check=True,
            )
            medians[("keras", num_threads)] = json.loads(done.stdout.strip().splitlines()[-1])["median_ms"]
        for name in ("keras", *PRECISIONS, "network", "onnx", "onnx int8"):
            if (name, threads[0]) in medians:
                rows.append((model, name, [medians[(name, t)] for t in threads]))
        print(f"{model} done", file=sys.stderr, flush=True)

    print(f"| model | runtime | {' | '.join(f'{t} thread(s), ms' for t in threads)} |")
    print("|---|---|" + "---|" * len(threads))
    labels = {
        "keras": "Keras predict_on_batch", "network": "TFLite fp32, network only",
        "onnx": "ONNX fp32 (onnxruntime)",
        "onnx int8": "ONNX int8, tf2onnx of the int8 TFLite (onnxruntime; not offered)",
    }
    for model, name, values in rows:
        label = labels.get(name, f"TFLite {name}")
        print(f"| {model} | {label} | {' | '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()

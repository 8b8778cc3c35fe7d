"""The scale-balanced loss leaves inference cost unchanged: both models exported, side by side.

    python -m exporters.compare_cost BASELINE_CKPT SCB_CKPT [--precision fp32] [--threads 1,2]

Exports both checkpoints to TFLite (same decoder settings) and reports: the op
histogram of each graph (must be identical), parameter counts (Keras and stored
constants) and file sizes, the names in each graph that would betray a loss
(none expected), and interpreter latency at each thread count, the two models
interleaved (alternating which goes first), with the ratio of the medians
SCB / baseline (the claim: 1.00 within noise, target +-0.03), for the full model
and without the NMS (the raw export: the network, box decoding and softmax; the
NMS's work depends on the scores, hence on the weights; the rest's does not).
"""

import hashlib
import re
import statistics
import time

import numpy as np
from absl import app, flags

from exporters import common, flatbuffer
from keras_scb import cli
from keras_scb import flags as common_flags

# Names a training loss would leave in a graph: the loss itself and the
# segment sums that count the anchors matched per object (SCB's M_i).
LOSS_TRACE = re.compile(r"loss|segment", re.IGNORECASE)


def loss_traces(model):
    """Op and tensor names of a ``.tflite`` model that look like a loss (expected: none)."""
    names = list(flatbuffer.op_histogram(model)) + flatbuffer.tensor_names(model)
    return sorted({name for name in names if LOSS_TRACE.search(name)})


def static_cost(model, detector=None):
    """What the file costs without running it.

    Args:
        model: ``.tflite`` bytes.
        detector: the Keras model, for its parameter count (optional).
    """
    return {
        "file_bytes": len(model),
        "sha256": hashlib.sha256(model).hexdigest(),
        "ops": dict(sorted(flatbuffer.op_histogram(model).items())),
        "constant_elements": flatbuffer.constant_elements(model),
        "keras_parameters": None if detector is None else int(detector.count_params()),
        "loss_traces": loss_traces(model),
    }


def interleaved_latency(models, num_threads=1, rounds=10, runs_per_round=5, warmup=3, seed=0):
    """Per-invoke seconds of each model, run in alternating order on the same image.

    Args:
        models: ``{name: .tflite bytes}``, all with the same input.
        num_threads: interpreter threads.
        rounds: each round runs every model ``runs_per_round`` times; the order
            of the models is reversed every other round, so a slow period of the
            machine hits both.

    Returns:
        ``{name: [seconds of each invoke]}``.
    """
    from exporters.runtime import TFLiteDetector

    runners = {name: TFLiteDetector(model, num_threads) for name, model in models.items()}
    size = next(iter(runners.values())).image_size
    image = np.random.default_rng(seed).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for runner in runners.values():
        for _ in range(warmup):
            runner.invoke(image)
    times = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for _ in range(runs_per_round):
                start = time.perf_counter()
                runners[name].invoke(image)
                times[name].append(time.perf_counter() - start)
    return times


def latency_summary(times, baseline, candidate):
    """Medians (ms) and the ratio of medians ``candidate / baseline``."""
    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    return {
        "median_ms": medians,
        "ratio": medians[candidate] / medians[baseline],
        "invokes": {name: len(values) for name, values in times.items()},
    }


def compare(
    baseline,
    candidate,
    precision="fp32",
    threads=(1, 2),
    rounds=10,
    runs_per_round=5,
    representative_images=None,
    names=("baseline", "scb"),
    **decoder_kwargs,
):
    """Exports two detectors and compares their inference cost.

    Args:
        baseline, candidate: `keras_scb.models.Detector` (e.g. trained with
            `MultiBoxLoss` and with `ScaleBalancedLoss`).
        precision, representative_images: as `exporters.tflite.convert`.
        threads: interpreter thread counts to time.
        names: the two models' names in the report.
        **decoder_kwargs: decoder options, the same for both.

    Returns:
        dict: ``static`` (per model, see `static_cost`), ``same_ops``,
        ``same_size``, ``same_constants``, ``identical_bytes``,
        ``same_network_ops``, ``latency`` and ``network_latency`` (per thread
        count, see `latency_summary`).
    """
    from exporters import tflite

    detectors = dict(zip(names, (baseline, candidate)))
    models = {
        name: tflite.convert(detector, precision, representative_images, **decoder_kwargs)
        for name, detector in detectors.items()
    }
    # The NMS's work depends on how many scores pass its threshold, so the
    # export without NMS is timed too: there, equal graphs must mean equal cost.
    networks = {
        name: tflite.convert(detector, precision, representative_images, postprocess=False)
        for name, detector in detectors.items()
    }
    static = {name: static_cost(models[name], detectors[name]) for name in names}
    first, second = (static[name] for name in names)
    report = {
        "precision": precision,
        "static": static,
        "same_ops": first["ops"] == second["ops"],
        "same_size": first["file_bytes"] == second["file_bytes"],
        "same_constants": first["constant_elements"] == second["constant_elements"]
        and first["keras_parameters"] == second["keras_parameters"],
        "identical_bytes": first["sha256"] == second["sha256"],
        "same_network_ops": flatbuffer.op_histogram(networks[names[0]])
        == flatbuffer.op_histogram(networks[names[1]]),
        "latency": {},
        "network_latency": {},
    }
    for num_threads in threads:
        times = interleaved_latency(models, num_threads, rounds, runs_per_round)
        report["latency"][num_threads] = latency_summary(times, *names)
        times = interleaved_latency(networks, num_threads, rounds, runs_per_round)
        report["network_latency"][num_threads] = latency_summary(times, *names)
    return report


def markdown(report):
    names = list(report["static"])
    a, b = (report["static"][n] for n in names)
    lines = [
        f"| ({report['precision']}) | {names[0]} | {names[1]} | same |",
        "|---|---|---|---|",
        f"| file bytes | {a['file_bytes']} | {b['file_bytes']} | {report['same_size']} |",
        f"| Keras parameters | {a['keras_parameters']} | {b['keras_parameters']} | {report['same_constants']} |",
        f"| stored constants | {_counts(a['constant_elements'])} | {_counts(b['constant_elements'])} | {report['same_constants']} |",
        f"| ops (total) | {sum(a['ops'].values())} | {sum(b['ops'].values())} | {report['same_ops']} |",
        f"| loss traces | {len(a['loss_traces'])} | {len(b['loss_traces'])} | |",
    ]
    for key, label in (("latency", "with NMS"), ("network_latency", "network only")):
        for threads, summary in report[key].items():
            medians = summary["median_ms"]
            lines.append(
                f"| latency {label}, {threads} thread(s), median ms | {medians[names[0]]:.2f} "
                f"| {medians[names[1]]:.2f} | ratio {summary['ratio']:.3f} |"
            )
    ops = sorted(set(a["ops"]) | set(b["ops"]))
    lines += ["", f"| op | {names[0]} | {names[1]} |", "|---|---|---|"]
    lines += [f"| {op} | {a['ops'].get(op, 0)} | {b['ops'].get(op, 0)} |" for op in ops]
    return "\n".join(lines)


def _counts(counts):
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _define_flags():
    flags.DEFINE_enum("precision", "fp32", ["fp32", "fp16", "int8"], "TFLite precision.")
    flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts.")
    flags.DEFINE_integer("rounds", 10, "Interleaved rounds.")
    flags.DEFINE_integer("runs_per_round", 5, "Invokes per model per round.")
    flags.DEFINE_string("representative_data", "bccd", "int8 calibration: 'bccd', 'synthetic' or a folder.")
    flags.DEFINE_string("output_json", None, "Also write the report as JSON here.")
    common_flags.whole_numbers("threads", 1)
    common_flags.at_least("rounds", 1)
    common_flags.at_least("runs_per_round", 1)
    common.define_decoder_flags()


def main(argv):
    if len(argv) != 3:
        raise app.UsageError("usage: python -m exporters.compare_cost BASELINE_CKPT SCB_CKPT [flags]")
    from exporters import tflite

    values = flags.FLAGS
    if values.output_json:  # the one output rule, before any work
        common.prepare_output(values.output_json, True, argv[1:], flag="--output_json")
    baseline, candidate = (common.load_detector(path) for path in argv[1:])
    representative = None
    if values.precision == "int8":
        representative = tflite.representative_images(values.representative_data, baseline.image_size)
    report = compare(
        baseline, candidate, values.precision, [int(t) for t in values.threads],
        values.rounds, values.runs_per_round, representative,
        **common.decoder_kwargs_from_flags(values),
    )
    print(markdown(report))
    if values.output_json:
        common.write_json(report, values.output_json)
    if not all(report[k] for k in ("same_ops", "same_network_ops", "same_size", "same_constants")):
        raise SystemExit("The two graphs differ: not the same architecture and settings.")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

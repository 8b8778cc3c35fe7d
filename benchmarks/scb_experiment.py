"""Baseline vs SCB (and other settings) with identical budgets, several seeds.

    python benchmarks/scb_experiment.py --config configs/quickstart.cfg \
        --variant multibox:--loss=multibox --variant scb:--loss=scb --seeds 0,1,2 \
        --output runs/scb_experiment

Each variant is a name and extra train flags (``name:--flag=v,--flag2=v``); each
(variant, seed) trains with ``python -m keras_scb.train`` into
``OUTPUT/NAME/seedS`` (a finished run is not redone, so the script resumes) and
is evaluated on the config's validation split. The summary (mean and sample
standard deviation over seeds of AP, AP50, AP_S and the recall of small / medium
/ large objects at score >= 0.01 / 0.1 / 0.3, sized on the original image and on
the network input) goes to ``OUTPUT/summary.md`` and ``summary.json``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SCALES = ("small", "medium", "large", "all")


def parse_variant(text):
    name, _, flags = text.partition(":")
    return name, [f for f in flags.split(",") if f]


def run_one(config, flags, model_dir, log):
    metrics = os.path.join(model_dir, "eval", "metrics.json")
    if os.path.exists(metrics):
        return metrics, None
    cmd = [sys.executable, "-m", "keras_scb.train", f"--flagfile={config}",
           f"--model_dir={model_dir}", "--verbose=2", *flags]
    start = time.time()
    with open(log, "a") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return metrics, time.time() - start


def scalars(results):
    coco = results["coco"]
    row = {"AP": coco["AP"], "AP50": coco["AP50"], "AP_S": coco["AP_S"],
           "voc07_mAP": results["voc07"]["mAP"]}
    for key, prefix in (("recall_by_scale", "orig"), ("recall_by_scale_at_input", "input")):
        for t, counts in results[key]["thresholds"].items():
            for scale in SCALES:
                c = counts[scale]
                row[f"R{prefix}_{scale}@{t}"] = c["recalled"] / c["total"] if c["total"] else None
                row[f"N{prefix}_{scale}"] = c["total"]
    return row


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows_by_variant):
    """``{variant: [row, ...]}`` -> ``{variant: {key: [mean, std, n]}}``."""
    return {
        variant: {
            key: [*mean_std([r[key] for r in rows]), len(rows)]
            for key in rows[0]
        }
        for variant, rows in rows_by_variant.items()
    }


def markdown(summary, seconds):
    variants = list(summary)
    keys = ["AP", "AP50", "AP_S", "voc07_mAP"]
    for prefix in ("orig", "input"):
        for t in ("0.01", "0.1", "0.3"):
            keys += [f"R{prefix}_{s}@{t}" for s in SCALES]
    lines = ["| metric (%) | " + " | ".join(variants) + " |",
             "|---" * (len(variants) + 1) + "|"]
    for key in keys:
        cells = []
        for v in variants:
            mean, std, n = summary[v].get(key, [None, None, 0])
            cells.append("n/a" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    counts = {k: summary[variants[0]][k][0] for k in summary[variants[0]] if k.startswith("N")}
    lines.append("")
    lines.append("Objects (test split, difficult excluded): " + ", ".join(
        f"{k[1:]}={int(v)}" for k, v in counts.items()))
    lines.append("Runs per variant: " + ", ".join(
        f"{v}={summary[v]['AP'][2]}" for v in variants))
    if seconds:
        lines.append("Median wall time of a run (s): " + ", ".join(
            f"{v}={statistics.median(s):.0f}" for v, s in seconds.items() if s))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.cfg")
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME:--flag=value,--flag=value (repeatable)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", default="runs/scb_experiment")
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    log = os.path.join(args.output, "train.log")
    rows, seconds = {}, {}
    for text in args.variant:
        name, flags = parse_variant(text)
        for seed in [int(s) for s in args.seeds.split(",")]:
            model_dir = os.path.join(args.output, name, f"seed{seed}")
            metrics, took = run_one(args.config, [*flags, f"--seed={seed}"], model_dir, log)
            with open(metrics) as f:
                rows.setdefault(name, []).append(scalars(json.load(f)))
            seconds.setdefault(name, [])
            if took is not None:
                seconds[name].append(took)
            print(f"{name} seed {seed}: AP50={rows[name][-1]['AP50']:.4f}"
                  + (f" ({took:.0f} s)" if took else " (cached)"), flush=True)
    summary = summarise(rows)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump({"config": args.config, "variants": args.variant, "seeds": args.seeds,
                   "summary": summary, "runs": rows}, f, indent=2)
    text = markdown(summary, seconds)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

"""The controlled SCB experiment (issue 15): arms x seeds (x runs), resumable.

    python benchmarks/scb_experiment.py --config configs/quickstart.cfg \
        --seeds 0,1,2,3,4 --output runs/scb_experiment

trains the four default arms, identical but for the loss's object weighting:

- ``multibox``: every positive weighs 1 (``--loss=multibox``);
- ``scb``: ``beta (ln M + 1) / M``, beta 3;
- ``uniform_beta``: every positive weighs beta (the "all positives up" control);
- ``scb_mean_normalised``: SCB rescaled to mean 1 over each image's positive
  anchors (only the balance between objects changes);

``--variant NAME:--flag=v,--flag=v`` (repeatable) replaces them with other arms.
Each (arm, seed, run) trains in this process, ``keras_scb.train.train`` of the
config with the arm's flags (its output appended to ``OUTPUT/train.log``), into
``OUTPUT/ARM/seedS`` (run 0) or ``OUTPUT/ARM/seedS_runR`` and is evaluated on the
config's validation split; a run whose ``eval/metrics.json`` exists is not redone,
so the script resumes after an interruption; runs go seed by seed (every arm of
seed 0, then of seed 1, ...), so that an interrupted experiment has whole pairs. ``--runs_per_seed 2`` repeats every
seed (TF CPU kernels are not deterministic: the quickstart's 10-run table is
``--variant scb:--loss=scb --seeds 0,1,2,3,4 --runs_per_seed 2``).

Writes ``OUTPUT/summary.md`` (Markdown tables for docs/results.md: per arm the
mean and its 95 % Student-t interval over runs, the paired difference to the
first arm, ``multibox`` by default, or to ``--baseline`` (pairs share seed and
run), the per-run table with per-class AP and wall time, the calibration),
``summary.json``, and one reliability diagram per arm,
``OUTPUT/calibration_ARM.png``, from the detections of all its runs.
``--report_only`` summarises the finished runs and trains nothing.

``--docs docs/results.md --docs_block NAME`` also puts the report into that file,
between the lines ``<!-- scb_experiment:NAME -->`` and ``<!-- /scb_experiment:NAME -->``
(which must be there, once each, before the run starts; the rest of the file is
kept byte for byte): the command that redoes the experiment, the tables of
``summary.md``, and the reliability diagrams, copied to ``images/NAME/`` next to
the file and linked from it.
"""

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from functools import partial
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import experiment_stats  # noqa: E402

from keras_scb.callbacks import EpochBackup  # noqa: E402
from keras_scb.config import TrainConfig  # noqa: E402
from keras_scb.fileio import atomic_write, read_text, write_json, write_text  # noqa: E402
from keras_scb.train import train  # noqa: E402

DEFAULT_ARMS = (
    "multibox:--loss=multibox",
    "scb:--loss=scb,--weighting=scb",
    "uniform_beta:--loss=scb,--weighting=uniform_beta",
    "scb_mean_normalised:--loss=scb,--weighting=scb_mean_normalised",
)
SCALES = ("small", "medium", "large", "all")
THRESHOLDS = ("0.01", "0.1", "0.3")
# (results key, label): objects sized on the original image / on the network input.
SIZINGS = (("", "orig"), ("_at_input", "input"))
HEADLINE = ("AP", "AP50", "AP_S", "AP_M", "AP_L", "voc07_mAP")
BLOCK_NAME = re.compile(r"[A-Za-z0-9_-]+")


def parse_variant(text):
    """``NAME:--flag=v,--flag=v`` -> (NAME, [flags]). Flags are split only at a
    comma followed by ``--``, so a list value (``--class_weights=0.7,2.5,2.5``)
    stays one flag."""
    name, _, flags = text.partition(":")
    return name, [f for f in re.split(r",(?=--)", flags) if f]


def run_dir(output, arm, seed, run):
    """``OUTPUT/ARM/seedS`` for run 0 (the layout of earlier experiments), else ``_runR``."""
    return os.path.join(output, arm, f"seed{seed}" + (f"_run{run}" if run else ""))


def run_one(config, flags, model_dir, log):
    """Trains and evaluates one run unless its metrics exist; returns the metrics
    path. The wall time is kept in ``MODEL_DIR/wall_time.json``, with the epochs
    that a resumed run had done before (``resumed_after_epoch``, 0 if none) and
    the command line that redoes the run."""
    metrics = os.path.join(model_dir, "eval", "metrics.json")
    if os.path.exists(metrics):
        return metrics
    done = EpochBackup(os.path.join(model_dir, "backup")).saved_epoch()
    args = [f"--flagfile={config}", f"--model_dir={model_dir}", "--verbose=2", *flags]
    recipe = TrainConfig.from_args(args)  # a bad variant flag stops here, before training
    cmd = [sys.executable, "-m", "keras_scb.train", *args]
    start = time.time()
    with open(log, "a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        print(" ".join(cmd), flush=True)
        train(recipe)
    # A resumed run's time is that of its last part only (the earlier parts were
    # killed before they could write theirs): the file and the table say so.
    write_json({"seconds": time.time() - start, "resumed_after_epoch": done, "command": cmd},
               os.path.join(model_dir, "wall_time.json"))
    return metrics


def _fraction(numerator, denominator):
    return numerator / denominator if denominator else None


def scalars(results):
    """The flat metrics of one run's results dict (fractions; None if undefined).

    Per-class AP is VOC07's; recall ``R``, precision ``P`` and false positives
    per image ``FPI`` are per scale and score threshold, with objects sized on
    the original image (``orig``) and on the network input (``input``). Runs
    evaluated before precision was reported have no ``P``/``FPI`` keys.
    """
    coco = results["coco"]
    row = {key: coco.get(key) for key in HEADLINE if key in coco}
    row["voc07_mAP"] = results["voc07"]["mAP"]
    for name, ap in results["voc07"]["per_class"].items():
        row[f"AP_{name}"] = ap
    for suffix, label in SIZINGS:
        recall = results.get("recall_by_scale" + suffix)
        for t, counts in (recall or {}).get("thresholds", {}).items():
            for scale in SCALES:
                c = counts[scale]
                row[f"R_{label}_{scale}@{t}"] = _fraction(c["recalled"], c["total"])
        precision = results.get("precision_by_scale" + suffix)
        for t, counts in (precision or {}).get("thresholds", {}).items():
            for scale in SCALES:
                tp, fp = counts[scale]["true_positives"], counts[scale]["false_positives"]
                row[f"P_{label}_{scale}@{t}"] = _fraction(tp, tp + fp)
                row[f"FPI_{label}_{scale}@{t}"] = fp / precision["num_images"]
    return row


def summarise(runs, baseline):
    """``runs``: ``{arm: {(seed, run): row}}`` -> ``{arm: {metric: {"interval",
    "paired"}}}``; ``paired`` (the difference to ``baseline``) is absent for the
    baseline itself."""
    summary = {}
    for arm, rows in runs.items():
        keys = []
        for row in rows.values():
            keys += [k for k in row if k not in keys]
        summary[arm] = {}
        for key in keys:
            values = {k: row.get(key) for k, row in rows.items()}
            entry = {"interval": experiment_stats.mean_interval(list(values.values()))}
            if arm != baseline and baseline in runs:
                base = {k: row.get(key) for k, row in runs[baseline].items()}
                entry["paired"] = experiment_stats.paired_difference(values, base)
            summary[arm][key] = entry
    return summary


def _metric_keys(summary):
    first = next(iter(summary.values()), {})
    keys = [k for k in HEADLINE if k in first]
    keys += [k for k in first if k.startswith("AP_") and k not in keys]
    for _, label in SIZINGS:
        for kind in ("R", "P", "FPI"):
            for t in THRESHOLDS:
                keys += [f"{kind}_{label}_{s}@{t}" for s in SCALES
                         if f"{kind}_{label}_{s}@{t}" in first]
    return keys


def _cell(stats, key):
    # False positives per image are counts, the rest fractions shown in percent.
    return experiment_stats.format_interval(stats, scale=1.0 if key.startswith("FPI") else 100.0,
                                            digits=2 if key.startswith("FPI") else 1)


def _wall_time(timing):
    """A run's ``wall_time.json`` (or None) as a table cell."""
    if timing is None:
        return "-"
    done = timing.get("resumed_after_epoch")  # absent in files of earlier experiments
    return f"{timing['seconds']:.0f}" + (f" (resumed after epoch {done})" if done else "")


def markdown(summary, runs, baseline, calibration, timings):
    """The Markdown tables of ``summary.md``; ``timings``: ``{arm: {(seed, run):
    wall_time.json's dict}}``."""
    arms = list(summary)
    keys = _metric_keys(summary)
    lines = [
        "Mean over runs with its 95 % Student-t interval (percent; FPI: false positives "
        "per image). R / P / FPI: recall / precision / false positives at score >= t, "
        "objects sized on the original image (orig) or the network input (input).",
        "",
        "| metric | " + " | ".join(arms) + " |",
        "|---" * (len(arms) + 1) + "|",
        # Arms can have different runs while the experiment is under way.
        "| runs | " + " | ".join(str(len(runs[a])) for a in arms) + " |",
    ]
    for key in keys:
        cells = [_cell(summary[a][key]["interval"], key) if key in summary[a] else "n/a"
                 for a in arms]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    others = [a for a in arms if a != baseline and baseline in summary]
    if others:
        lines += [
            "",
            f"Paired difference to `{baseline}` (same seed and run), mean with its 95 % "
            "interval; an interval that contains 0 does not separate the arms.",
            "",
            "| metric | " + " | ".join(f"{a} - {baseline}" for a in others) + " |",
            "|---" * (len(others) + 1) + "|",
            "| pairs | " + " | ".join(str(len(runs[a].keys() & runs[baseline].keys()))
                                       for a in others) + " |",
        ]
        for key in keys:
            cells = [_cell(summary[a][key]["paired"], key) if key in summary[a] else "n/a"
                     for a in others]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    classes = [k for k in keys if k.startswith("AP_") and k not in HEADLINE]
    lines += ["", "Every run (percent; a resumed run's wall time is that of its last part):", "",
              "| arm | seed | run | AP | AP50 | " + " | ".join(classes) + " | wall time (s) |",
              "|---" * (6 + len(classes)) + "|"]
    for arm in arms:
        for (seed, run), row in sorted(runs[arm].items()):
            values = [row.get("AP"), row.get("AP50")] + [row.get(k) for k in classes]
            cells = ["-" if v is None else f"{100 * v:.1f}" for v in values]
            lines.append(f"| {arm} | {seed} | {run} | " + " | ".join(cells)
                         + f" | {_wall_time(timings.get(arm, {}).get((seed, run)))} |")
    lines += ["", "Calibration of the detections (all runs of an arm pooled; correct = true "
              "positive at IoU 0.5):", "", "| arm | detections | ECE | diagram |", "|---|---|---|---|"]
    for arm in arms:
        if arm in calibration:
            bins, ece, path = calibration[arm]
            lines.append(f"| {arm} | {sum(bins['count'])} | "
                         f"{'n/a' if ece is None else f'{ece:.3f}'} | {os.path.basename(path)} |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``<!-- scb_experiment:NAME -->`` and
    ``<!-- /scb_experiment:NAME -->`` replaced by ``body``; the rest, marker lines
    included, is kept as it is.

    A marker is a line of its own (spaces around it allowed). ``body`` gets a
    final newline, and ``\r\n`` line endings if the start marker's line has one.
    Raises `ValueError` naming the marker if either marker is missing or
    repeated, or if the end marker comes before the start marker.
    """
    found = []
    for marker in (f"<!-- scb_experiment:{name} -->", f"<!-- /scb_experiment:{name} -->"):
        lines = list(re.finditer(rf"^[ \t]*{re.escape(marker)}[ \t]*(\r?\n|\Z)", text, re.M))
        numbers = ", ".join(str(text.count("\n", 0, m.start()) + 1) for m in lines)
        if len(lines) != 1:
            raise ValueError(f"the marker line {marker} is "
                             + (f"repeated (lines {numbers})." if lines else "missing."))
        found.append((lines[0], marker, numbers))
    (start, start_marker, start_line), (end, end_marker, end_line) = found
    if end.start() < start.end():
        raise ValueError(f"the marker line {end_marker} (line {end_line}) comes before "
                         f"{start_marker} (line {start_line}).")
    if body and not body.endswith("\n"):
        body += "\n"
    if start.group(1) == "\r\n":
        body = re.sub(r"\r?\n", "\r\n", body)
    return text[:start.end()] + body + text[end.start():]


def docs_text(path: str, name: str, body: str) -> str:
    """The text of the file ``path`` with its block ``name`` replaced by ``body``;
    a `ValueError` naming ``path`` if it cannot be read or lacks the block."""
    try:
        text = read_text(path, newline="")
    except OSError as error:
        raise ValueError(f"Cannot read {path}: {error.strerror or error}.") from None
    try:
        return replace_block(text, name, body)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def command_line(args) -> str:
    """The command that redoes the experiment of ``args``, every option spelled out
    (the output folder as given), without --docs, --docs_block and --report_only."""
    words = ["python", "benchmarks/scb_experiment.py", "--config", args.config]
    for variant in args.variant or DEFAULT_ARMS:
        words += ["--variant", variant]
    words += ["--seeds", args.seeds, "--runs_per_seed", str(args.runs_per_seed),
              "--output", args.output]
    if args.baseline is not None:
        words += ["--baseline", args.baseline]
    return shlex.join(words)


def update_docs(path: str, name: str, command: str, summary: str, diagrams: list) -> None:
    """Writes the block ``name`` of the Markdown file ``path``: ``command`` (as a
    code line), the ``summary`` tables and the PNG files ``diagrams``, copied to
    ``images/NAME/`` next to ``path`` and linked from it."""
    links = [f"![{os.path.basename(png)[:-4]}](images/{name}/{quote(os.path.basename(png))})"
             for png in diagrams]
    body = f"    {command}\n\n{summary}" + "".join(f"\n{link}" for link in links)
    text = docs_text(path, name, body)
    for png in diagrams:
        atomic_write(os.path.join(os.path.dirname(path), "images", name, os.path.basename(png)),
                     partial(shutil.copyfile, png))
    write_text(text, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.cfg")
    parser.add_argument("--variant", action="append",
                        help="NAME:--flag=value,--flag=value (repeatable); default: the four "
                             "arms of the module docstring. The first is the paired baseline "
                             "unless --baseline names another.")
    parser.add_argument("--baseline", metavar="NAME",
                        help="The arm the others are paired with (default: the first); "
                             "changes the report only, e.g. --report_only --baseline scb.")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--runs_per_seed", type=int, default=1)
    parser.add_argument("--output", default="runs/scb_experiment")
    parser.add_argument("--report_only", action="store_true",
                        help="Summarise the runs that exist; train nothing.")
    parser.add_argument("--docs", metavar="FILE",
                        help="Also write the report into this Markdown file (with --docs_block).")
    parser.add_argument("--docs_block", metavar="NAME",
                        help="The block of --docs to replace: the lines between "
                             "<!-- scb_experiment:NAME --> and <!-- /scb_experiment:NAME -->.")
    args = parser.parse_args(argv)
    if args.runs_per_seed < 1:
        parser.error(f"--runs_per_seed must be >= 1; got {args.runs_per_seed}.")
    if (args.docs is None) != (args.docs_block is None):
        parser.error("--docs and --docs_block go together; got only "
                     + ("--docs." if args.docs_block is None else "--docs_block."))
    if args.docs_block is not None and not BLOCK_NAME.fullmatch(args.docs_block):
        parser.error(f"--docs_block must match [A-Za-z0-9_-]+; got {args.docs_block!r}.")
    if args.docs is not None:
        try:  # before hours of training, not after
            docs_text(args.docs, args.docs_block, "")
        except ValueError as error:
            parser.error(str(error))
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_ARMS)]
    names = [name for name, _ in variants]
    baseline = args.baseline or names[0]
    if baseline not in names:
        parser.error(f"--baseline must be one of the arms ({', '.join(names)}); got {baseline!r}.")
    os.makedirs(args.output, exist_ok=True)
    log = os.path.join(args.output, "train.log")
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.report_only:
        # Seed-major: every arm of a seed before the next seed, so that an
        # interrupted experiment leaves complete pairs for the paired differences.
        for seed in seeds:
            for run in range(args.runs_per_seed):
                for name, flags in variants:
                    run_one(args.config, [*flags, f"--seed={seed}"],
                            run_dir(args.output, name, seed, run), log)
    try:  # OSError: fileio's OutputError names the file
        report(args.output, names, seeds, args.runs_per_seed, baseline, {
            "config": args.config, "variants": [f"{n}:{','.join(fl)}" for n, fl in variants],
            "seeds": args.seeds, "runs_per_seed": args.runs_per_seed,
        }, None if args.docs is None else (args.docs, args.docs_block, command_line(args)))
    except (ValueError, OSError) as error:
        parser.error(str(error))


def report(output, names, seeds, runs_per_seed, baseline, meta, docs=None):
    """Summarises the finished runs of the arms ``names`` under ``output`` (those
    with ``eval/metrics.json``): ``summary.md``, ``summary.json`` (``meta`` and the
    statistics), one reliability diagram per arm; with ``docs`` ``(FILE, BLOCK,
    COMMAND)`` also that block of the Markdown file (`update_docs`). Used by
    `benchmarks/retinanet_experiment.py` too."""
    from keras_scb import calibration as calibration_lib

    runs, timings, bins = {}, {}, {}
    for name in names:
        for seed in seeds:
            for run in range(runs_per_seed):
                model_dir = run_dir(output, name, seed, run)
                metrics = os.path.join(model_dir, "eval", "metrics.json")
                if not os.path.exists(metrics):
                    continue
                with open(metrics) as f:
                    results = json.load(f)
                runs.setdefault(name, {})[(seed, run)] = scalars(results)
                if results.get("calibration"):
                    bins.setdefault(name, []).append(results["calibration"])
                timing = os.path.join(model_dir, "wall_time.json")
                if os.path.exists(timing):
                    with open(timing) as f:
                        timings.setdefault(name, {})[(seed, run)] = json.load(f)
                print(f"{name} seed {seed} run {run}: AP50 {runs[name][(seed, run)]['AP50']:.4f}",
                      flush=True)
    if not runs:
        print("No finished runs.")
        return
    calibration = {}
    for name, parts in bins.items():
        merged = calibration_lib.merge_bins(parts)
        path = calibration_lib.plot_reliability_diagram(
            merged, os.path.join(output, f"calibration_{name}.png"),
            f"{name}: {len(parts)} runs, {sum(merged['count'])} detections",
        )
        calibration[name] = (merged, calibration_lib.expected_calibration_error(merged), path)
    summary = summarise(runs, baseline)
    write_json({
            **meta, "baseline": baseline, "summary": summary,
            "runs": {a: {f"seed{s}_run{r}": row for (s, r), row in rows.items()}
                     for a, rows in runs.items()},
            "calibration": {a: {"bins": b, "ece": e} for a, (b, e, _) in calibration.items()},
        }, os.path.join(output, "summary.json"))
    text = markdown(summary, runs, baseline, calibration, timings)
    write_text(text, os.path.join(output, "summary.md"))
    print(text)
    if docs is not None:
        path, block, command = docs
        update_docs(path, block, command, text, [p for _, _, p in calibration.values()])
        print(f"Wrote the block {block} of {path}.")

if __name__ == "__main__":
    main()

"""benchmarks/scb_experiment.py and its statistics: intervals and paired
differences against hand-computed cases; the report from finished runs, also
into a marked block of a Markdown file (--docs, --docs_block)."""

import json
import math
import os
import shlex
import sys

import pytest

from keras_scb import calibration
from keras_scb import evaluation as ev
from test_precision_calibration import hand_case

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import experiment_stats as stats  # noqa: E402
import scb_experiment  # noqa: E402


@pytest.mark.parametrize("probability, dof, want", [
    (0.975, 4, 2.7764), (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 9, 2.2622),
    (0.975, 30, 2.0423), (0.95, 3, 2.3534), (0.995, 10, 3.1693),
])
def test_t_quantile_table_values(probability, dof, want):
    assert stats.t_quantile(probability, dof) == pytest.approx(want, abs=1e-4)


def test_mean_interval_hand_case():
    # [1..5]: mean 3, sd sqrt(2.5) = 1.5811, half-width 2.7764 * 1.5811 / sqrt(5) = 1.9632
    got = stats.mean_interval([1, 2, 3, None, 4, 5])
    assert got["n"] == 5 and got["mean"] == pytest.approx(3.0)
    assert got["sd"] == pytest.approx(1.5811, abs=1e-4)
    assert got["half_width"] == pytest.approx(1.9632, abs=1e-4)
    assert (got["low"], got["high"]) == pytest.approx((1.0368, 4.9632), abs=1e-4)
    one = stats.mean_interval([0.7])
    assert one["mean"] == 0.7 and one["half_width"] is None
    assert stats.format_interval(one) == "70.0" and stats.format_interval(got, 1, 2) == "3.00 [1.04, 4.96]"
    assert stats.mean_interval([])["mean"] is None


def test_median_interval_hand_case():
    # n = 10: P(Bin(10, 1/2) <= 1) = 11/1024, so [x_(2), x_(9)] covers
    # 1 - 22/1024 = 0.9785 >= 0.95, and [x_(3), x_(8)] only 1 - 112/1024 = 0.8906.
    values = [9, 1, 8, 2, 7, 3, 6, 4, 5, 100]
    got = stats.median_interval(values)
    assert got["median"] == 5.5
    assert (got["low"], got["high"]) == (2.0, 9.0)
    assert got["coverage"] == pytest.approx(1 - 22 / 1024)
    # Five values cannot give 95 % (the widest interval covers 1 - 2/32 = 0.9375).
    few = stats.median_interval([3, 1, 2, 5, 4])
    assert few["median"] == 3 and few["low"] is None and few["coverage"] is None
    assert stats.format_median_interval(got) == "5.500 [2.000, 9.000]"
    assert stats.format_median_interval(few) == "3.000"


def test_paired_difference_pairs_by_key():
    # Differences over the shared keys (0, 1), (1, 0), (2, 0): 2, 3, 2 -> mean 7/3,
    # sd 0.5774, half-width 4.3027 * 0.5774 / sqrt(3) = 1.4342. Unshared keys drop out.
    arm = {(0, 1): 3.0, (1, 0): 5.0, (2, 0): 4.0, (3, 0): 1.0}
    base = {(0, 1): 1.0, (1, 0): 2.0, (2, 0): 2.0, (4, 0): 9.0}
    got = stats.paired_difference(arm, base)
    assert got["pairs"] == [(0, 1), (1, 0), (2, 0)]
    assert got["mean"] == pytest.approx(7 / 3)
    assert got["half_width"] == pytest.approx(1.4342, abs=1e-4)
    # Pairing removes the seed effect that an unpaired comparison keeps.
    assert got["half_width"] < stats.mean_interval(list(arm.values()))["half_width"]


def _fake_results(ap50):
    gts, dets = hand_case()
    results = ev.evaluate_detections(gts, dets, class_names=["RBC", "WBC"])
    results["recall_by_scale_at_input"] = ev.recall_by_scale(gts, dets)
    results["precision_by_scale_at_input"] = ev.precision_by_scale(gts, dets)
    results["coco"]["AP50"] = ap50
    return results


def test_parse_variant_keeps_list_values():
    assert scb_experiment.parse_variant(
        "cw:--loss=scb,--class_weights=0.74,2.46,2.5,--beta=3") == (
        "cw", ["--loss=scb", "--class_weights=0.74,2.46,2.5", "--beta=3"])
    assert scb_experiment.parse_variant("multibox:--loss=multibox") == (
        "multibox", ["--loss=multibox"])


@pytest.fixture
def finished_runs(tmp_path, monkeypatch):
    """Two arms x seeds 0, 1, 2 x runs 0, 1 with metrics in ``tmp_path/runs``, and
    training disabled; returns the command-line arguments that report them and
    the output folder."""
    output = tmp_path / "runs"
    ap50 = {"multibox": [0.60, 0.70, 0.65], "scb": [0.66, 0.75, 0.69]}
    for arm, values in ap50.items():
        for seed, value in enumerate(values):
            for run in (0, 1):
                folder = os.path.join(scb_experiment.run_dir(str(output), arm, seed, run), "eval")
                os.makedirs(folder)
                with open(os.path.join(folder, "metrics.json"), "w") as f:
                    json.dump(_fake_results(value + 0.01 * run), f)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(scb_experiment, "train", no_training)
    argv = ["--variant", "multibox:--loss=multibox", "--variant", "scb:--loss=scb",
            "--seeds", "0,1,2", "--runs_per_seed", "2", "--output", str(output)]
    return argv, output


def test_report_from_finished_runs(finished_runs):
    argv, output = finished_runs
    scb_experiment.main(argv)
    text = (output / "summary.md").read_text()
    summary = json.loads((output / "summary.json").read_text())
    # AP50 differences per (seed, run): 0.06, 0.05, 0.04 twice -> mean 0.05.
    paired = summary["summary"]["scb"]["AP50"]["paired"]
    assert paired["n"] == 6 and paired["mean"] == pytest.approx(0.05)
    # Deviations +-0.01 four times: sd = sqrt(4e-4 / 5); half-width t(0.975, 5) sd / sqrt(6).
    assert paired["half_width"] == pytest.approx(2.5706 * math.sqrt(4e-4 / 5) / math.sqrt(6), rel=1e-4)
    assert "| AP50 | 65.5 [" in text  # multibox: mean of 0.60, 0.61, 0.70, 0.71, 0.65, 0.66
    assert "| scb - multibox |" in text and "| P_input_small@0.3 |" in text
    assert "| FPI_orig_all@0.01 | 1.50 [1.50, 1.50] |" in text  # 3 FPs on 2 images, every run
    assert "| AP_WBC |" in text and "| scb | 2 | 1 |" in text
    assert "| runs | 6 | 6 |" in text and "| pairs | 6 |" in text
    os.remove(output / "scb" / "seed2_run1" / "eval" / "metrics.json")  # an unfinished run
    scb_experiment.main([*argv, "--report_only"])
    text = (output / "summary.md").read_text()
    assert "| runs | 6 | 5 |" in text and "| pairs | 5 |" in text
    assert (output / "calibration_scb.png").stat().st_size > 0
    # Six identical runs pooled: the ECE of one.
    one = ev.evaluate_detections(*hand_case())["calibration"]
    assert summary["calibration"]["scb"]["ece"] == pytest.approx(
        calibration.expected_calibration_error(one))


START, END = "<!-- scb_experiment:main -->\n", "<!-- /scb_experiment:main -->\n"


def test_replace_block_keeps_everything_else():
    head = ("# Results ± β\r\n"  # a CRLF line outside the block stays CRLF
            "Prose naming <!-- scb_experiment:main --> inline: not a marker.\n"
            "<!-- scb_experiment:main --> and text after it: not a marker either.\n"
            "<!-- scb_experiment:main-2 -->\nanother block\n<!-- /scb_experiment:main-2 -->\n"
            "  <!-- scb_experiment:main -->  \n")
    tail = "<!-- /scb_experiment:main -->\ntext after, no final newline"
    text = head + "old\ntable\n" + tail
    once = scb_experiment.replace_block(text, "main", "| new | table |")
    assert once == head + "| new | table |\n" + tail
    assert scb_experiment.replace_block(once, "main", "| new | table |") == once
    assert scb_experiment.replace_block(once, "main", "") == head + tail
    # A block whose start marker ends in CRLF gets CRLF lines.
    assert scb_experiment.replace_block("a\r\n<!-- scb_experiment:b -->\r\nold\r\n"
                                        "<!-- /scb_experiment:b -->\r\n", "b", "x\ny\n") == (
        "a\r\n<!-- scb_experiment:b -->\r\nx\r\ny\r\n<!-- /scb_experiment:b -->\r\n")


@pytest.mark.parametrize("text, problem", [
    ("prose\n" + END, "<!-- scb_experiment:main --> is missing."),
    ("<!-- scb_experiment:main-2 -->\n" + END, "<!-- scb_experiment:main --> is missing."),
    (START + "prose\n", "<!-- /scb_experiment:main --> is missing."),
    (START + END + START, "<!-- scb_experiment:main --> is repeated (lines 1, 3)."),
    (START + END + "x\n" + END, "<!-- /scb_experiment:main --> is repeated (lines 2, 4)."),
    ("x\n" + END + START, "<!-- /scb_experiment:main --> (line 2) comes before "
                          "<!-- scb_experiment:main --> (line 3)."),
])
def test_replace_block_refuses_malformed_markers(text, problem):
    with pytest.raises(ValueError) as error:
        scb_experiment.replace_block(text, "main", "new")
    assert str(error.value) == "the marker line " + problem


def test_report_into_docs_block(finished_runs, tmp_path):
    argv, output = finished_runs
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    head = ("# Results ± β\r\n\n" + START).encode()
    tail = (END[:-1] + "\r\ntext after, no final newline").encode()
    docs.write_bytes(head + b"stale table\n" + tail)
    scb_experiment.main(argv + ["--report_only", "--docs", str(docs), "--docs_block", "main"])
    data = docs.read_bytes()
    assert data.startswith(head) and data.endswith(tail)
    block = data[len(head):-len(tail)].decode()
    command, blank, summary = block.split("\n", 2)
    assert command == "    " + shlex.join(["python", "benchmarks/scb_experiment.py", "--config",
                                           "configs/quickstart.cfg", *argv])
    assert blank == "" and summary.startswith((output / "summary.md").read_text())
    assert "| scb | 2 | 1 |" in summary and "stale" not in block
    for arm in ("multibox", "scb"):
        assert f"\n![calibration_{arm}](images/main/calibration_{arm}.png)\n" in summary
        copied = docs.parent / "images" / "main" / f"calibration_{arm}.png"
        assert copied.read_bytes() == (output / f"calibration_{arm}.png").read_bytes()
    assert sorted(os.listdir(docs.parent)) == ["images", "results.md"]  # no temporaries left


@pytest.mark.parametrize("doc, block, message", [
    ("no markers\n", "main", "DOCS: the marker line <!-- scb_experiment:main --> is missing."),
    (END + START, "main",
     "DOCS: the marker line <!-- /scb_experiment:main --> (line 1) comes before"),
    (START + END + START, "main", "DOCS: the marker line <!-- scb_experiment:main --> is repeated"),
    (START + END, "ma in", "--docs_block must match [A-Za-z0-9_-]+; got 'ma in'."),
    (START + END, None, "--docs and --docs_block go together; got only --docs."),
])
def test_docs_errors_before_any_work(finished_runs, tmp_path, capsys, doc, block, message):
    argv, output = finished_runs
    docs = tmp_path / "results.md"
    docs.write_text(doc)
    with pytest.raises(SystemExit):
        scb_experiment.main(argv + ["--docs", str(docs)]
                            + (["--docs_block", block] if block else []))
    assert message.replace("DOCS", str(docs)) in capsys.readouterr().err
    assert docs.read_text() == doc and not (output / "summary.md").exists()
    assert sorted(os.listdir(tmp_path)) == ["results.md", "runs"]  # no images, no temporaries


def test_docs_block_removed_during_the_run(finished_runs, tmp_path, monkeypatch, capsys):
    argv, output = finished_runs
    docs = tmp_path / "results.md"
    docs.write_text(START + END)
    markdown = scb_experiment.markdown

    def edit_then_markdown(*args):
        docs.write_text("someone removed the block\n")
        return markdown(*args)

    monkeypatch.setattr(scb_experiment, "markdown", edit_then_markdown)
    with pytest.raises(SystemExit):
        scb_experiment.main(argv + ["--docs", str(docs), "--docs_block", "main"])
    error = capsys.readouterr().err
    assert f"{docs}: the marker line <!-- scb_experiment:main --> is missing." in error
    assert docs.read_text() == "someone removed the block\n"
    assert (output / "summary.md").exists() and not (tmp_path / "images").exists()


@pytest.mark.parametrize("saved_epoch", [None, 4])
def test_run_one_records_a_resumed_run(tmp_path, monkeypatch, saved_epoch):
    model_dir = tmp_path / "scb" / "seed2"
    if saved_epoch is not None:  # an earlier part was killed after this epoch
        (model_dir / "backup").mkdir(parents=True)
        (model_dir / "backup" / "state.json").write_text(
            json.dumps({"epoch": saved_epoch, "weights": "epoch-00004.weights.h5"}))
    configs = []

    def train(config):
        configs.append(config)
        (model_dir / "eval").mkdir(parents=True)
        (model_dir / "eval" / "metrics.json").write_text("{}")

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(scb_experiment, "train", train)
    metrics = scb_experiment.run_one("configs/quickstart.cfg", ["--seed=2"], str(model_dir),
                                     str(tmp_path / "train.log"))
    assert metrics == str(model_dir / "eval" / "metrics.json") and len(configs) == 1
    assert (configs[0].runtime.seed, configs[0].runtime.model_dir) == (2, str(model_dir))
    assert configs[0].loss.class_weights == (0.74, 2.46, 2.5)  # the rest is the config's
    timing = json.loads((model_dir / "wall_time.json").read_text())
    assert timing["resumed_after_epoch"] == (saved_epoch or 0) and timing["seconds"] >= 0
    assert timing["command"][1:] == ["-m", "keras_scb.train", "--flagfile=configs/quickstart.cfg",
                                     f"--model_dir={model_dir}", "--verbose=2", "--seed=2"]
    assert " ".join(timing["command"]) in (tmp_path / "train.log").read_text()
    # Finished: not trained again.
    scb_experiment.run_one("configs/quickstart.cfg", ["--seed=2"], str(model_dir),
                           str(tmp_path / "train.log"))
    assert len(configs) == 1


def test_table_marks_resumed_runs(finished_runs):
    argv, output = finished_runs
    for arm, seed, run, timing in [
        ("multibox", 0, 0, {"seconds": 1400.4}),  # written before resumed runs were marked
        ("scb", 0, 0, {"seconds": 1399.6, "resumed_after_epoch": 0}),
        ("scb", 1, 1, {"seconds": 1182.3, "resumed_after_epoch": 4}),
    ]:
        with open(os.path.join(scb_experiment.run_dir(str(output), arm, seed, run),
                               "wall_time.json"), "w") as f:
            json.dump(timing, f)
    scb_experiment.main([*argv, "--report_only"])
    text = (output / "summary.md").read_text()
    rows = {tuple(line.split(" | ")[:3]): line for line in text.splitlines()
            if line.startswith(("| multibox | ", "| scb | "))}
    assert rows[("| multibox", "0", "0")].endswith(" | 1400 |")
    assert rows[("| scb", "0", "0")].endswith(" | 1400 |")
    assert rows[("| scb", "1", "1")].endswith(" | 1182 (resumed after epoch 4) |")
    assert rows[("| scb", "1", "0")].endswith(" | - |")


def test_baseline_flag_pairs_with_another_arm(finished_runs, capsys):
    argv, output = finished_runs
    scb_experiment.main([*argv, "--report_only", "--baseline", "scb"])
    summary = json.loads((output / "summary.json").read_text())
    assert summary["baseline"] == "scb" and "paired" not in summary["summary"]["scb"]["AP50"]
    paired = summary["summary"]["multibox"]["AP50"]["paired"]
    assert paired["n"] == 6 and paired["mean"] == pytest.approx(-0.05)  # the sign flips
    text = (output / "summary.md").read_text()
    assert "| multibox - scb |" in text and "| scb - multibox |" not in text
    with pytest.raises(SystemExit):
        scb_experiment.main([*argv, "--report_only", "--baseline", "scb_mean_normalised"])
    assert ("--baseline must be one of the arms (multibox, scb); got 'scb_mean_normalised'."
            in capsys.readouterr().err)

"""benchmarks/retinanet_experiment.py without keras-hub: its statistics and report
path (scb_experiment.report on RetinaNet arms), its options and its targets."""

import json
import os
import sys

import numpy as np
import pytest

from test_scb_experiment import _fake_results

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import retinanet_experiment  # noqa: E402
import scb_experiment  # noqa: E402


def test_report_pairs_the_arms_with_keras_hubs_focal_loss(tmp_path, monkeypatch):
    output = tmp_path / "runs"
    ap50 = {"focal": [0.50, 0.55, 0.60], "forced_match": [0.52, 0.56, 0.63],
            "scb": [0.58, 0.59, 0.70]}
    for arm, values in ap50.items():
        for seed, value in enumerate(values):
            folder = os.path.join(scb_experiment.run_dir(str(output), arm, seed, 0), "eval")
            os.makedirs(folder)
            with open(os.path.join(folder, "metrics.json"), "w") as f:
                json.dump(_fake_results(value), f)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(retinanet_experiment, "build_model", no_training)
    monkeypatch.setattr(retinanet_experiment, "read_config", lambda path: (None, None))
    retinanet_experiment.main(["--seeds", "0,1,2", "--output", str(output)])
    summary = json.loads((output / "summary.json").read_text())
    text = (output / "summary.md").read_text()
    # scb - focal per seed: 0.08, 0.04, 0.10 -> mean 0.0733; forced - focal: 0.02, 0.01, 0.03.
    assert summary["baseline"] == "focal"
    assert summary["summary"]["scb"]["AP50"]["paired"]["mean"] == pytest.approx(0.22 / 3)
    assert summary["summary"]["forced_match"]["AP50"]["paired"]["mean"] == pytest.approx(0.02)
    assert summary["arms"]["scb"] == {"weighting": "scb", "force_best_anchor": True}
    assert "--arms focal,forced_match,scb" in summary["command"]
    assert "| forced_match - focal | scb - focal |" in text and "| pairs | 3 | 3 |" in text
    assert "| AP_S |" in text and "| R_input_small@0.3 |" in text and "ECE" in text


@pytest.mark.parametrize("argv, message", [
    (["--arms", "focal,scb2"], "--arms: unknown ['scb2']"),
    (["--steps", "10", "--warmup_steps", "10"], "--warmup_steps (10) must be < --steps (10)"),
    (["--docs", "x.md"], "--docs and --docs_block go together"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        retinanet_experiment.main(argv)
    assert message in capsys.readouterr().err


def test_keras_hub_targets_are_pixel_xyxy_with_minus_one_padding():
    encode = retinanet_experiment.keras_hub_targets(200)
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    y = encode(boxes, np.array([[2, -1]], np.int32))
    np.testing.assert_allclose(y["boxes"].numpy(), [[[20, 40, 100, 120], [-1, -1, -1, -1]]],
                               rtol=1e-6)
    np.testing.assert_array_equal(y["labels"].numpy(), [[2.0, -1.0]])

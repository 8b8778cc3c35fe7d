"""Shared by tests/test_faults_round2_*.py (issue 25): a tiny run folder, CLI runs, contents."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The smallest detector on synthetic data, one step (seconds on two cores).
TINY = [
    "--model=mobilenetv2-ssdlite300", "--width_multiplier=0.35", "--backbone_weights=none",
    "--dataset=synthetic", "--synthetic_images=4", "--batch_size=2", "--steps_per_epoch=1",
    "--epochs=1", "--nofinal_eval", "--verbose=0", "--noaugment",
]


def run_module(module, *args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result, *fragments):
    """Exit status 1, no traceback, one error line that names every fragment; returns it."""
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines()
              if ": error: " in line or "Flags parsing error" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def contents(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def train_in_process(model_dir, *extra):
    """``keras_scb.train.train`` of the config of `TINY` and ``extra`` flags, in this
    process; returns its `TrainResult` (it releases the run folder itself)."""
    from keras_scb.config import TrainConfig
    from keras_scb.train import train

    return train(TrainConfig.from_args([f"--model_dir={model_dir}", *TINY, *extra]))

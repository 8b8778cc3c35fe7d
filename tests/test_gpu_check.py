"""`benchmarks/gpu_check.py --smoke`: the GPU check's CPU path runs without TensorFlow."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_smoke_runs_a_step_without_tensorflow():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--smoke"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = re.search(r"^mobilenetv2-ssdlite300\s+float32\s+2\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)",
                    done.stdout, re.MULTILINE)
    assert row, done.stdout
    scb, multibox, ratio, gflop = (float(v) for v in row.groups())
    assert scb > 0 and multibox > 0 and ratio > 0
    # SSDLite300's training FLOPs per image: about 4 GFLOP (TF profiler: 4.0).
    assert 2.0 < gflop < 8.0
    # Training from uint8 images with the colour and the matching in the step.
    row = re.search(r"^images\+aug\s+mobilenetv2-ssdlite300\s+float32\s+2\s+(\S+)\s+(\S+)\s+"
                    r"(\S+)\s+(\S+)", done.stdout, re.MULTILINE)
    assert row, done.stdout
    images, encoded, ratio, augmented_gflop = (float(v) for v in row.groups())
    assert images > 0 and encoded > 0 and ratio > 0
    assert gflop <= augmented_gflop < 1.1 * gflop  # colour + matching: a few % at most
    assert "tensorflow imported: False" in done.stdout


def test_gpu_check_blocks_tensorflow():
    """The import hook makes `import tensorflow` fail without marking it imported."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import gpu_check;"
        "gpu_check.block_tensorflow()\n"
        "try:\n import tensorflow\nexcept ImportError as e:\n print('blocked', e)\n"
        "print('tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "blocked gpu_check blocks tensorflow: the GPU machine has no TensorFlow.", "False"
    ]

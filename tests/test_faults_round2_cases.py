"""Issue 25's closing re-run: the new cases of tests/round2_cases.py, all clear or handled.

Slow (one 1-step training, then ~70 cases, ten of them command lines that import
TensorFlow before parsing their flags): ~10 min on 2 cores. The table of the
cases, before (main) and after, is docs/faults_round2.md.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_every_new_case_is_a_clear_error_or_handled(tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]),
               ROUND2_REPO=os.path.dirname(HERE), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, os.path.join(HERE, "round2_cases.py"), "--all",
                           f"--out={out}"], env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) >= 60
    wrong = [row for row in rows if row["class"] not in ("clear", "handled")]
    assert not wrong, wrong

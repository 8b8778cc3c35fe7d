import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def run_python(code, env=None, timeout=600):
    """Runs ``code`` in a fresh interpreter (for backend or device settings that
    must be chosen before TensorFlow/Keras start) and returns its stdout."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


@pytest.fixture
def python_subprocess():
    return run_python


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 1-step run folder of the smallest detector (tests/round2_testing.py),
    shared by the issue 25 fault tests: copy it before changing anything in it."""
    from round2_testing import train_in_process

    folder = tmp_path_factory.mktemp("tiny_run")
    train_in_process(folder)
    return folder

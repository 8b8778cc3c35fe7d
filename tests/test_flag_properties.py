"""Every command line's numeric flags over their declared ranges and just outside (issue 25).

The property check itself is `flag_properties` (tests/flag_properties.py), run
in one child interpreter because absl flags are process-wide and the tools
share flag names. Derandomized and bounded (12 examples a side of each flag).
Budget: ~15 s on 2 cores (one interpreter importing the exporters).
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_every_numeric_flag_of_every_tool_has_its_range_checked():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE,
                                           os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", "import flag_properties; flag_properties.main()"],
                          env=env, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "flags of 11 tools" in done.stdout, done.stdout

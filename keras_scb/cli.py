"""Running a command line: expected errors print one line, bugs a traceback.

An expected error is bad input, a bad flag value, a missing or damaged file, or
an output that cannot be written: `ValueError` (the package's input errors
subclass it), `OSError`, or a `UserError`. It prints
``<program>: error: <message>`` (and the line of its cause, if any) on stderr
and exits with status 1. Any other exception is a bug and keeps its traceback;
``KERAS_SCB_TRACEBACK=1`` shows the traceback of expected errors too.
"""

import os
import sys
from typing import Callable

from absl import app


class UserError(Exception):
    """An expected failure that is not bad input (e.g. training diverged)."""


EXPECTED_ERRORS = (ValueError, OSError, UserError)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run(main: Callable) -> None:
    """`absl.app.run(main)` with expected errors reported in one line."""

    def guarded(argv):
        try:
            return main(argv)
        except EXPECTED_ERRORS as error:
            if os.environ.get("KERAS_SCB_TRACEBACK"):
                raise
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            program = spec.name if spec else os.path.basename(sys.argv[0])
            print(f"{program}: error: {_one_line(error)}", file=sys.stderr)
            cause = error.__cause__
            if cause is not None and str(cause) not in str(error):
                print(f"  cause: {type(cause).__name__}: {_one_line(cause)}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded)

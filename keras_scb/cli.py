"""Running a command line: expected errors print one line, bugs a traceback.

An expected error is bad input, a bad flag value, a missing or damaged file, or
an output that cannot be written: `ValueError` (the package's input errors
subclass it), `OSError`, or a `UserError`. It prints
``<program>: error: <message>`` (and the line of its cause, if any) on stderr
and exits with status 1. Any other exception is a bug and keeps its traceback;
``KERAS_SCB_TRACEBACK=1`` shows the traceback of expected errors too.

The tools share one flag vocabulary (``--checkpoint`` for a model file,
``--dataset``/``--data_dir``/``--train_split``/``--val_split``, ``--bad_input``,
``--class_names`` a list). A flag renamed into it keeps its old name as a
deprecated alias (`define_renamed`): `run` prints one warning line for it.
"""

import os
import sys
from typing import Callable, Dict

from absl import app, flags


class UserError(Exception):
    """An expected failure that is not bad input (e.g. training diverged)."""


EXPECTED_ERRORS = (ValueError, OSError, UserError)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# Old flag name -> its new name, for the flags renamed into the shared vocabulary.
_RENAMED: Dict[str, str] = {}


def define_renamed(old: str, new: str) -> None:
    """Keeps ``--old`` working as a deprecated name of the defined flag ``--new``."""
    flags.DEFINE_alias(old, new)
    _RENAMED[old] = new


def _check_renamed(program: str) -> None:
    """One warning line per deprecated flag name used; an error if the new name was
    given too (which value wins would depend on their order)."""
    for old, new in _RENAMED.items():
        if old in flags.FLAGS and flags.FLAGS[old].present:
            if flags.FLAGS[new].present > flags.FLAGS[old].present:
                raise ValueError(f"--{old} is the old name of --{new}; give --{new} only.")
            print(f"{program}: warning: --{old} is deprecated; use --{new}.", file=sys.stderr)


def run(main: Callable) -> None:
    """`absl.app.run(main)` with expected errors reported in one line."""

    def guarded(argv):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        program = spec.name if spec else os.path.basename(sys.argv[0])
        try:
            _check_renamed(program)
            return main(argv)
        except EXPECTED_ERRORS as error:
            if os.environ.get("KERAS_SCB_TRACEBACK"):
                raise
            print(f"{program}: error: {_one_line(error)}", file=sys.stderr)
            cause = error.__cause__
            if cause is not None and str(cause) not in str(error):
                print(f"  cause: {type(cause).__name__}: {_one_line(cause)}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded)

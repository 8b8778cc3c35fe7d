"""absl flags parsed in-process for one test, reset afterwards."""

import contextlib

from absl import flags


@contextlib.contextmanager
def train_flags(*args):
    """Yields ``absl.flags.FLAGS`` parsed as ``python -m keras_scb.train ARGS`` parses them.

    absl keeps parsed values process-wide, so they are reset on exit (and before
    parsing, in case an earlier test left them set); otherwise one test's flags
    would leak into the next.
    """
    import keras_scb.train  # noqa: F401  (defines the flags)

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", *args])
    try:
        yield flags.FLAGS
    finally:
        flags.FLAGS.unparse_flags()

"""The data flags that ``keras_scb.evaluate`` and ``keras_scb.match_stats`` share
with ``keras_scb.train``, read from absl's process-wide ``FLAGS``.

The flags are `keras_scb.config.DataConfig`'s fields (defined from them, so one
vocabulary); these helpers build that section from the parsed flags and read
splits through it. ``keras_scb.train`` itself turns all its flags into a
`keras_scb.config.TrainConfig` and reads nothing from here.
"""

import sys
from typing import Any, Optional, Sequence, TextIO, Union

from absl import flags

from keras_scb import config

FLAGS = flags.FLAGS


def define_data_flags() -> None:
    """Defines the shared data flags (``--dataset``, ``--data_dir``, the splits, ...)."""
    config.define_flags(FLAGS, [config.DataConfig], train_only=False)


def data_config() -> config.DataConfig:
    """The `DataConfig` of the parsed data flags."""
    return config.DataConfig(**config.flag_values_of(FLAGS, [config.DataConfig]))


# (what was read, its issues) of every split read in this process, for
# `print_skipped_input` at the end of a run.
_ISSUES = []


def load_split(splits: Union[str, Sequence[str]]) -> Any:
    """`keras_scb.config.DataConfig.read_split` of the flags' dataset; its skip
    counts are kept for `print_skipped_input`."""
    source = data_config().read_split(splits)
    issues = getattr(source, "issues", None)
    if issues:
        _ISSUES.append((split_name(splits), issues))
    return source


def split_name(splits: Union[str, Sequence[str]]) -> str:
    """``--dataset=NAME split SPLIT``: how errors name a split of the flags' dataset."""
    return data_config().split_name(splits)


def check_same_class_names(train: Any, val: Any) -> None:
    """The ``--train_split`` and ``--val_split`` sources (``Dataset`` or
    ``TFRecordSource``) must share the label map."""
    data_config().check_same_class_names(train, val)


def print_skipped_input(file: Optional[TextIO] = None) -> None:
    """Prints the counts of input skipped or clipped by the splits read so far."""
    from keras_scb.data import records

    for split, issues in _ISSUES:
        print(f"{split}: {records.format_issues(issues)}", file=file or sys.stderr)

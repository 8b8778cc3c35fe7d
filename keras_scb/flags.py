"""The data flags that ``keras_scb.evaluate`` and ``keras_scb.match_stats`` share
with ``keras_scb.train``, read from absl's process-wide ``FLAGS``.

The flags are `keras_scb.config.DataConfig`'s fields (defined from them, so one
vocabulary); these helpers build that section from the parsed flags and read
splits through it. ``keras_scb.train`` itself turns all its flags into a
`keras_scb.config.TrainConfig` and reads nothing from here.
"""

import math
import sys
from typing import Any, Callable, Optional, Sequence, TextIO, Union

from absl import flags

from keras_scb import config


# Every numeric flag of every tool has a declared range, checked by absl when
# the command line is parsed and on assignment: a bad value is a one-line error
# ``flag --NAME=VALUE: must be ...`` before anything runs. The train flags and the
# shared data flags declare theirs as a `keras_scb.config.Range` of their field;
# the tools' own flags with these helpers. Unset (None) optional flags pass.
def require(name: str, check: Callable[[object], bool], requirement: str) -> None:
    """Registers an absl validator of ``--name``: ``check(value)`` must hold."""

    def valid(value):
        try:
            return value is None or bool(check(value))
        except (TypeError, ValueError):
            return False

    flags.register_validator(name, valid, message=f"must be {requirement}")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def at_least(name: str, low: float) -> None:
    """``--name >= low`` (a finite number)."""
    require(name, lambda v: _number(v) and v >= low, f">= {low}")


def above(name: str, low: float) -> None:
    """``--name > low`` (a finite number)."""
    require(name, lambda v: _number(v) and v > low, f"> {low}")


def between(name: str, low: float, high: float, open_low: bool = False,
            open_high: bool = False) -> None:
    """``low <= --name <= high``, a bound excluded when ``open_low``/``open_high``."""
    def check(v):
        return (_number(v) and (v > low if open_low else v >= low)
                and (v < high if open_high else v <= high))

    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    require(name, check, f"in {interval}")


def whole_numbers(name: str, low: int = 0, increasing: bool = False) -> None:
    """A list flag of whole numbers ``>= low``, strictly increasing if ``increasing``."""
    def check(values):
        numbers = [int(v) for v in values]  # "abc" -> ValueError -> invalid
        if any(str(n) != str(v).strip() for n, v in zip(numbers, values)):
            return False  # "1.5", "1e3"
        return all(n >= low for n in numbers) and (
            not increasing or all(a < b for a, b in zip(numbers, numbers[1:])))

    order = ", increasing" if increasing else ""
    require(name, check, f"a comma-separated list of whole numbers >= {low}{order}")

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

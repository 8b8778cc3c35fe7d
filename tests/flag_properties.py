"""Property check of every command line's numeric flags (issue 25), run in a child process.

absl flags are process-wide and several tools define flags of the same name
(``--checkpoint``, ``--score_threshold``...), so `main` defines one tool's flags,
checks them, deletes them and goes on to the next tool: one interpreter for
all. For each flag of `RANGES` (its declared range), values drawn inside it
must be accepted and values just outside it (or of another type) refused by
absl's validation with an error naming the flag, before anything runs. Every
integer, float and number-list flag of every tool must be in `RANGES`, so a
new flag cannot go without a declared range.

Run by tests/test_flag_properties.py: ``python -c "import flag_properties; flag_properties.main()"``.
"""

import importlib
import math
import sys

from absl import app, flags, logging  # noqa: F401  (absl's own flags, defined first)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
INF = math.inf
# Data and model flags, shared by train, evaluate and match_stats.
_DATA = {"synthetic_images": ("int", 1, INF), "synthetic_clutter": ("int", 0, INF),
         "synthetic_small_fraction": ("float", 0, 1)}
_MODEL = {"num_classes": ("int", 0, INF), "width_multiplier": ("float>", 0, INF),
          "bn_momentum": ("float", 0, "<1")}
_DECODER = {"score_threshold": ("float", 0, "<1"), "iou_threshold": ("float>", 0, 1),
            "max_detections": ("int", 1, INF), "pre_nms_top_k": ("int", 1, INF)}
# tool -> {flag: (kind, low, high)}; kind "float>" excludes the low end, a high
# "<h" excludes the high end; "ints": a list of whole numbers >= low ("ints+":
# strictly increasing).
RANGES = {
    "keras_scb.train": {
        **_DATA, **_MODEL,
        **dict.fromkeys(["batch_size", "epochs", "eval_batch_size"], ("int", 1, INF)),
        **dict.fromkeys(["steps_per_epoch", "warmup_steps", "neg_pos_ratio", "max_boxes", "seed",
                         "eval_every"], ("int", 0, INF)),
        **dict.fromkeys(["weight_decay", "alpha"], ("float", 0, INF)),
        **dict.fromkeys(["learning_rate", "beta", "lr_decay", "clipnorm"], ("float>", 0, INF)),
        "momentum": ("float", 0, "<1"), "verbose": ("int", 0, 2),
        "lr_decay_steps": ("ints+", 1, INF),
        # Checked together by AugmentConfig (train._check_flags), before any data is read.
        "expand_prob": None, "max_expand": None,
    },
    "keras_scb.evaluate": {**_DATA, "batch_size": ("int", 1, INF)},
    "keras_scb.match_stats": {
        **_DATA, **dict.fromkeys(["augment_samples", "max_images", "seed"], ("int", 0, INF)),
        "batch_size": ("int", 1, INF), "iou_threshold": ("float>", 0, 1)},
    "keras_scb.data.convert": {"num_shards": ("int", 1, INF)},
    "exporters.saved_model": dict(_DECODER),
    "exporters.tflite": {**_DECODER, "representative_count": ("int", 1, INF)},
    "exporters.predict": {"score_threshold": ("float", 0, 1), "num_threads": ("int", 1, INF)},
    "exporters.accuracy": {**_DATA, **_DECODER, "representative_count": ("int", 1, INF),
                           "max_images": ("int", 1, INF), "top_k": ("int", 1, INF)},
    "exporters.onnx": dict(_DECODER),
    "exporters.compare_cost": {**_DECODER, "threads": ("ints", 1, INF), "rounds": ("int", 1, INF),
                               "runs_per_round": ("int", 1, INF)},
    "exporters.mediapipe_check": {"count": ("int", 1, INF), "score_threshold": ("float", 0, 1)},
}
FLAGS = flags.FLAGS


def _define(tool):
    module = importlib.import_module(tool)  # keras_scb.train defines its flags on import
    if hasattr(module, "_define_flags"):
        module._define_flags()


def _numeric(flag):
    kinds = (flags.IntegerParser, flags.FloatParser)
    return isinstance(flag.parser, kinds) or flag.name in ("lr_decay_steps", "threads")


def _accepts(name, value):
    default = FLAGS[name].value
    try:
        setattr(FLAGS, name, value)
    except flags.IllegalFlagValueError as error:
        assert f"--{name}=" in str(error), error  # the error names the flag
        return False
    setattr(FLAGS, name, default)
    return True


def _inside(kind, low, high):
    top = 10**6 if high == INF else (1 if high == "<1" else high)
    if kind == "int":
        return st.integers(int(low), int(top))
    if kind.startswith("ints"):
        return st.lists(st.integers(int(low), 10**6), max_size=4, unique=True).map(
            lambda v: [str(n) for n in sorted(v)])
    values = st.floats(low, top, exclude_min=kind == "float>", exclude_max=high == "<1")
    return values


def _outside(kind, low, high):
    below = st.integers(-10**6, int(low) - 1) if kind == "int" else st.floats(
        -1e6, low, exclude_max=kind != "float>")
    options = [below]
    if kind.startswith("float"):
        options.append(st.sampled_from([math.nan, -math.inf] + ([math.inf] if high == INF else [])))
    if high != INF:
        top = 1 if high == "<1" else high
        options.append(st.integers(int(top) + 1, 10**6) if kind == "int" else st.floats(
            top, 1e6, exclude_min=high != "<1"))
    if kind.startswith("ints"):
        unordered = [["5", "3"], ["2", "2"]] if kind == "ints+" else []
        return st.one_of(
            st.lists(st.integers(-10**6, int(low) - 1), min_size=1, max_size=3).map(
                lambda v: [str(n) for n in v]),
            st.sampled_from([["abc"], ["1.5"], ["1e3"], *unordered]))
    return st.one_of(*options)


def check_tool(tool):
    before = set(FLAGS)
    _define(tool)
    defined = set(FLAGS) - before
    ranges = RANGES[tool]
    ours = {n for n in defined  # not those of libraries imported on the way (TensorFlow's)
            if (FLAGS.find_module_defining_flag(n) or "").startswith(("keras_scb", "exporters"))}
    undeclared = sorted(n for n in ours if _numeric(FLAGS[n]) and n not in ranges)
    assert not undeclared, f"{tool}: numeric flags without a declared range: {undeclared}"
    for name, declared in ranges.items():
        if declared is None:
            continue
        assert name in defined, f"{tool} has no --{name}"

        @SETTINGS
        @given(_inside(*declared))
        def inside(value):
            assert _accepts(name, value), f"{tool} --{name}={value!r} refused"

        @SETTINGS
        @given(_outside(*declared))
        def outside(value):
            assert not _accepts(name, value), f"{tool} --{name}={value!r} accepted"

        inside()
        outside()
    for name in defined:
        delattr(FLAGS, name)
    return len(ranges)


def main():
    checked = {tool: check_tool(tool) for tool in RANGES}
    print(f"checked {sum(checked.values())} flags of {len(checked)} tools")
    sys.stdout.flush()

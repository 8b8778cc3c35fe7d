"""The import layers of docs/architecture.md hold: no module imports a layer above its own.

Every module of `keras_scb` and `exporters` must be placed in `LAYERS` (a new
module without a layer fails here, so the table in docs/architecture.md is
kept true). Imports inside functions count too.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Module (dotted, a package's __init__ by its package name) -> layer, as in
# docs/architecture.md ("1. mechanisms" ... "6. command lines, deployment").
LAYERS = {
    # The package imports the modules whose Keras objects it registers (layers 1-3).
    "keras_scb": 3,
    **dict.fromkeys([
        "keras_scb.anchors", "keras_scb.anchor_weights", "keras_scb.box_coding",
        "keras_scb.output_layout",
        "keras_scb.matching", "keras_scb.losses", "keras_scb.refinedet_loss",
        "keras_scb.on_device", "keras_scb.augment_on_device", "keras_scb.schedules",
        "keras_scb.optimizers",
        "keras_scb.keras_compat", "keras_scb.fileio", "keras_scb.label_map",
        "keras_scb.box_formats", "keras_scb.decoding",
    ], 1),
    **dict.fromkeys([
        "keras_scb.models", "keras_scb.models.backbones", "keras_scb.models.detector",
        "keras_scb.models.dssd", "keras_scb.models.factory", "keras_scb.models.fssd",
        "keras_scb.models.heads", "keras_scb.models.layers", "keras_scb.models.refinedet",
        "keras_scb.models.ssd", "keras_scb.models.ssdlite", "keras_scb.models.task",
        "keras_scb.models.vgg", "keras_scb.models.reference_weights",
        "keras_scb.checkpoints",
    ], 2),
    "keras_scb.postprocess": 3,
    **dict.fromkeys([
        "keras_scb.data", "keras_scb.data.augment", "keras_scb.data.coco",
        "keras_scb.data.pipeline", "keras_scb.data.records", "keras_scb.data.synthetic",
        "keras_scb.data.tfrecord", "keras_scb.data.vendored", "keras_scb.data.voc",
    ], 4),
    **dict.fromkeys([
        "keras_scb.validation", "keras_scb.evaluation", "keras_scb.calibration",
        "keras_scb.callbacks", "keras_scb.config", "keras_scb.run_folder",
    ], 5),
    # Other libraries' detectors trained with SCB (optional extras): models and
    # their losses, above the mechanisms, below data and evaluation.
    **dict.fromkeys(["keras_scb.integrations", "keras_scb.integrations.keras_hub"], 2),
    **dict.fromkeys([
        "keras_scb.train", "keras_scb.evaluate", "keras_scb.match_stats", "keras_scb.flags",
        "keras_scb.cli", "keras_scb.data.convert", "keras_scb.convert_weights",
        "exporters", "exporters.accuracy", "exporters.common", "exporters.compare_cost",
        "exporters.flatbuffer", "exporters.predict", "exporters.runtime",
        "exporters.saved_model", "exporters.tflite", "exporters.metadata",
        "exporters.mediapipe_check", "exporters.onnx", "exporters.smoke_load", "exporters.vendor",
        "exporters.vendor.metadata_schema_py_generated",
    ], 6),
}


def _modules():
    for root in ("keras_scb", "exporters"):
        for folder, _, names in os.walk(os.path.join(REPO, root)):
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    yield dotted.removesuffix(".__init__"), path


def _imported(tree, module):
    """Dotted names of the project modules ``module`` imports (any depth)."""
    package = module if module in ("keras_scb", "exporters") or module.endswith(
        (".models", ".data")) else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from keras_scb import losses` imports the module keras_scb.losses.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in LAYERS else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in LAYERS and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in LAYERS:
                yield name


def test_every_module_has_a_layer():
    missing = [module for module, _ in _modules() if module not in LAYERS]
    assert not missing, f"place these in LAYERS and docs/architecture.md: {missing}"


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, path in _modules():
        with open(path) as f:
            tree = ast.parse(f.read())
        for name in _imported(tree, module):
            if LAYERS[name] > LAYERS[module]:
                upward.append(f"{module} (layer {LAYERS[module]}) imports {name} "
                              f"(layer {LAYERS[name]})")
    assert not upward, upward

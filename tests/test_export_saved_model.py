"""SavedModel export: reloaded signatures against the Keras inference model; atomicity.

Budget: ~40 s on 2 cores (one export of three signatures, one reload).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import export_testing
from exporters import common, saved_model
from keras_scb.losses import ScaleBalancedLoss

CLASS_NAMES = ("circle", "square", "triangle")


# Keras 3.15 loading weights under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """Through a checkpoint compiled with the SCB loss, as the trainer writes them."""
    path = tmp_path_factory.mktemp("checkpoint") / "best.keras"
    export_testing.save_checkpoint(export_testing.make_detector(seed=0), path, ScaleBalancedLoss())
    return common.load_detector(path)


@pytest.fixture(scope="module")
def export_dir(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "saved_model"
    return saved_model.export_saved_model(
        detector, path, class_names=CLASS_NAMES, **export_testing.DECODER
    )


@pytest.fixture(scope="module")
def reloaded(export_dir):
    return tf.saved_model.load(os.fspath(export_dir))


def _assert_same_detections(actual, expected):
    assert sorted(actual) == sorted(common.DETECTION_KEYS)
    assert expected["num_detections"].min() >= 10  # not comparing empty outputs
    for key in common.DETECTION_KEYS:
        assert actual[key].dtype == tf.float32
        np.testing.assert_allclose(actual[key].numpy(), expected[key], atol=1e-5, rtol=0)


def test_serving_default_matches_keras(detector, reloaded):
    images = export_testing.images(3, seed=11)
    outputs = reloaded.signatures["serving_default"](images=tf.constant(images))
    _assert_same_detections(outputs, export_testing.keras_detections(detector, images))


def test_any_size_matches_keras(detector, reloaded):
    # build_inference_model resizes any size to 300 x 300 the same way.
    images = export_testing.images(2, seed=12, size=300)
    images = tf.image.resize(images, (240, 416)).numpy().round().astype(np.uint8)
    outputs = reloaded.signatures["serving_any_size"](images=tf.constant(images))
    _assert_same_detections(outputs, export_testing.keras_detections(detector, images))


def test_raw_signature(detector, reloaded):
    images = export_testing.images(2, seed=13).astype(np.float32)
    raw = reloaded.signatures["raw"](images=tf.constant(images))["raw_predictions"]
    np.testing.assert_allclose(raw.numpy(), detector.predict(images, verbose=0), atol=1e-5, rtol=0)


def test_signature_inputs(reloaded):
    specs = {
        name: reloaded.signatures[name].structured_input_signature[1]["images"]
        for name in ("serving_default", "serving_any_size", "raw")
    }
    assert specs["serving_default"].dtype == tf.uint8
    assert tuple(specs["serving_default"].shape) == (None, 300, 300, 3)
    assert tuple(specs["serving_any_size"].shape) == (None, None, None, 3)
    assert specs["raw"].dtype == tf.float32


def test_metadata_and_labels(export_dir, detector):
    assert common.read_class_names(export_dir) == CLASS_NAMES
    with open(os.path.join(export_dir, common.METADATA_FILE)) as f:
        metadata = json.load(f)
    assert metadata["image_size"] == 300
    assert metadata["num_classes"] == export_testing.NUM_CLASSES
    assert metadata["decoder"] == export_testing.DECODER
    # The registry key, which build_detector takes back (not the Keras name).
    assert metadata["model"] == "mobilenetv2-ssdlite300" != detector.name
    assert metadata["output_layout"] == "ssd"
    from keras_scb.anchors import anchor_spec_from_config, get_anchors

    anchors = get_anchors(anchor_spec_from_config(metadata["anchor_spec"]))
    np.testing.assert_array_equal(anchors, detector.anchors)


def test_no_loss_in_graph(reloaded):
    """Nothing of the training loss reaches the served graph."""
    graph = reloaded.signatures["serving_default"].graph.as_graph_def()
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
        names = " ".join(node.name for node in function.node_def).lower()
        assert "loss" not in names and "segment" not in names
    assert not [op for op in ops if "Segment" in op or "Loss" in op]


def test_failed_export_leaves_nothing(detector, tmp_path, monkeypatch):
    class FailingArchive:
        def write_out(self, filepath, **kwargs):
            with open(os.path.join(filepath, "saved_model.pb"), "w") as f:
                f.write("partial")
            raise RuntimeError("interrupted")

    monkeypatch.setattr(saved_model, "build_archive", lambda *args, **kwargs: FailingArchive())
    target = tmp_path / "saved_model"
    with pytest.raises(RuntimeError, match="interrupted"):
        saved_model.export_saved_model(detector, target)
    assert os.listdir(tmp_path) == []

    target.mkdir()
    (target / "keep.txt").write_text("previous export")
    with pytest.raises(FileExistsError):
        saved_model.export_saved_model(detector, target)
    with pytest.raises(RuntimeError, match="interrupted"):
        saved_model.export_saved_model(detector, target, overwrite=True)
    assert os.listdir(tmp_path) == ["saved_model"]
    assert os.listdir(target) == ["keep.txt"]

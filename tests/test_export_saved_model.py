"""SavedModel export: the TF Object Detection API's contract, reloaded signatures
against the Keras inference model (order-free), a client process without keras_scb,
bad inputs, label map, atomicity.

Budget: ~50 s on 2 cores (one export, one reload, one fresh TensorFlow process).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import export_testing
from exporters import common, saved_model
from keras_scb.losses import ScaleBalancedLoss

CLASS_NAMES = ("circle", "square", "triangle")
PER_ROW = ("detection_anchor_indices", "detection_multiclass_scores")


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


def _numpy(outputs):
    return {key: value.numpy() for key, value in outputs.items()}


def _zero_based(od_api):
    """OD API outputs with ``detection_classes`` back to ``0..C-1`` (checking the 1-based ids)."""
    classes = od_api["detection_classes"]
    valid = np.arange(classes.shape[1]) < od_api["num_detections"][:, None]
    assert np.all(classes[valid] >= 1) and np.all(classes[valid] <= len(CLASS_NAMES))
    assert not classes[~valid].any()
    return {**od_api, "detection_classes": np.where(valid, classes - 1, 0)}


def _wide_images(count, seed):
    images = export_testing.images(count, seed=seed, size=300)
    return tf.image.resize(images, (240, 416)).numpy().round().astype(np.uint8)


def test_serving_default_is_the_od_api_contract(reloaded):
    signature = reloaded.signatures["serving_default"]
    (name, spec), = signature.structured_input_signature[1].items()
    assert name == "input_tensor" and spec.dtype == tf.uint8
    assert tuple(spec.shape) == (None, None, None, 3)
    outputs = signature.structured_outputs
    assert sorted(outputs) == sorted(saved_model.OD_API_KEYS)
    assert all(o.dtype == tf.float32 for o in outputs.values())
    k, a, c = export_testing.DECODER["max_detections"], 3000, export_testing.NUM_CLASSES
    shapes = {key: tuple(o.shape) for key, o in outputs.items()}
    assert shapes == {
        "detection_boxes": (None, k, 4), "detection_classes": (None, k),
        "detection_scores": (None, k), "num_detections": (None,),
        "detection_anchor_indices": (None, k), "detection_multiclass_scores": (None, k, c + 1),
        "raw_detection_boxes": (None, a, 4), "raw_detection_scores": (None, a, c + 1),
    }


@pytest.mark.parametrize("size", ["model", "wide"])
def test_serving_default_matches_keras(detector, reloaded, size):
    images = export_testing.images(2, seed=11) if size == "model" else _wide_images(2, seed=12)
    served = _numpy(reloaded.signatures["serving_default"](input_tensor=tf.constant(images)))
    # build_inference_model resizes any size to 300 x 300 the same way.
    keras = export_testing.keras_detections(detector, images, extra_outputs=True)
    export_testing.assert_same_detections(
        _zero_based(served), keras, box_atol=1e-5, score_atol=1e-5, per_row=PER_ROW
    )
    for key in ("raw_detection_boxes", "raw_detection_scores"):  # per anchor: no order to lose
        np.testing.assert_allclose(served[key], keras[key], atol=1e-5, rtol=0, err_msg=key)
    # The OD API's relations between its fields, on every valid row.
    for b in range(len(images)):
        n = int(served["num_detections"][b])
        anchors = served["detection_anchor_indices"][b, :n].astype(int)
        multiclass = served["detection_multiclass_scores"][b, :n]
        np.testing.assert_array_equal(
            multiclass[np.arange(n), served["detection_classes"][b, :n].astype(int)],
            served["detection_scores"][b, :n],
        )
        np.testing.assert_array_equal(served["raw_detection_scores"][b, anchors], multiclass)
        np.testing.assert_array_equal(
            served["raw_detection_boxes"][b, anchors], served["detection_boxes"][b, :n]
        )


def test_detect_zero_based_matches_keras(detector, reloaded):
    images = export_testing.images(3, seed=13)
    served = _numpy(reloaded.signatures["detect_zero_based"](images=tf.constant(images)))
    assert sorted(served) == sorted(common.DETECTION_KEYS)
    export_testing.assert_same_detections(
        served, export_testing.keras_detections(detector, images), box_atol=1e-5, score_atol=1e-5
    )


def test_raw_signature(detector, reloaded):
    images = export_testing.images(2, seed=13).astype(np.float32)
    raw = reloaded.signatures["raw"](images=tf.constant(images))["raw_predictions"]
    np.testing.assert_allclose(raw.numpy(), detector.predict_raw(images, verbose=0), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 64, 64, 3), np.float32), "expected to be a uint8 tensor"),
        (np.zeros((64, 64, 3), np.uint8), r"not compatible with expected shape \[\?,\?,\?,3\]"),
        (np.zeros((1, 64, 64, 1), np.uint8), r"not compatible with expected shape \[\?,\?,\?,3\]"),
        (np.zeros((1, 64, 64, 4), np.uint8), r"not compatible with expected shape \[\?,\?,\?,3\]"),
    ],
)
def test_bad_input_is_a_clear_error(reloaded, bad, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        reloaded.signatures["serving_default"](input_tensor=tf.constant(bad))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        reloaded.signatures["detect_zero_based"](images=tf.constant(bad))


def _string_int_label_map_class():
    """The OD API's ``StringIntLabelMap`` message (``protos/string_int_label_map.proto``
    fields name = 1, id = 2, display_name = 3), built here: the OD API is not installed."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="string_int_label_map.proto", package="object_detection.protos", syntax="proto2"
    )
    item = proto.message_type.add(name="StringIntLabelMapItem")
    for name, number, kind in (("name", 1, field.TYPE_STRING), ("id", 2, field.TYPE_INT32),
                               ("display_name", 3, field.TYPE_STRING)):
        item.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    label_map = proto.message_type.add(name="StringIntLabelMap")
    label_map.field.add(
        name="item", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
        type_name=".object_detection.protos.StringIntLabelMapItem",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("object_detection.protos.StringIntLabelMap")
    )


@pytest.mark.parametrize("names", [CLASS_NAMES, ('say "hi"', "back\\slash", "ünï")])
def test_label_map_parses_as_string_int_label_map(names):
    from google.protobuf import text_format

    parsed = text_format.Parse(saved_model.label_map_text(names), _string_int_label_map_class()())
    assert [(i.id, i.name, i.display_name) for i in parsed.item] == [
        (k + 1, name, name) for k, name in enumerate(names)
    ]


def test_metadata_and_labels(export_dir, detector):
    assert common.read_class_names(export_dir) == CLASS_NAMES
    with open(os.path.join(export_dir, saved_model.LABEL_MAP_FILE)) as f:
        assert f.read() == saved_model.label_map_text(CLASS_NAMES)
    with open(os.path.join(export_dir, common.METADATA_FILE)) as f:
        metadata = json.load(f)
    assert metadata["image_size"] == 300
    assert metadata["num_classes"] == export_testing.NUM_CLASSES
    assert metadata["decoder"] == export_testing.DECODER
    assert metadata["signatures"] == list(saved_model.SIGNATURES)
    # The registry key, which build_detector takes back (not the Keras name).
    assert metadata["model"] == "mobilenetv2-ssdlite300" != detector.name
    assert metadata["output_layout"] == "ssd"
    from keras_scb.anchors import anchor_spec_from_config, get_anchors

    anchors = get_anchors(anchor_spec_from_config(metadata["anchor_spec"]))
    np.testing.assert_array_equal(anchors, detector.anchors)


# A client that has only TensorFlow: no keras_scb, no exporters, no Keras model code.
CLIENT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    export_dir, images_path, output_path = sys.argv[1:]
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    outputs = serve(input_tensor=tf.constant(np.load(images_path)))
    np.savez(output_path, **{key: value.numpy() for key, value in outputs.items()})
    assert "keras_scb" not in sys.modules and "exporters" not in sys.modules, sorted(sys.modules)
    print("served")
""")


def test_served_in_a_fresh_process_without_keras_scb(detector, export_dir, tmp_path):
    images = _wide_images(2, seed=14)
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, os.fspath(export_dir), str(tmp_path / "images.npy"),
         str(tmp_path / "served.npz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""),
    )
    assert done.returncode == 0 and "served" in done.stdout, done.stderr[-3000:]
    served = dict(np.load(tmp_path / "served.npz"))
    export_testing.assert_same_detections(
        _zero_based(served), export_testing.keras_detections(detector, images),
        min_iou=0.9, score_atol=1e-4,
    )


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
    (target / "keep.txt").write_text("not an export")
    with pytest.raises(FileExistsError):
        saved_model.export_saved_model(detector, target)
    # --overwrite never deletes what the exporter did not write (issue 25).
    with pytest.raises(OSError, match=r"did not write: \['keep.txt'\]"):
        saved_model.export_saved_model(detector, target, overwrite=True)
    assert os.listdir(target) == ["keep.txt"]
    # An earlier export is replaced only as a whole: a failed one leaves it.
    os.remove(target / "keep.txt")
    (target / "saved_model.pb").write_text("previous export")
    with pytest.raises(RuntimeError, match="interrupted"):
        saved_model.export_saved_model(detector, target, overwrite=True)
    assert os.listdir(tmp_path) == ["saved_model"]
    assert os.listdir(target) == ["saved_model.pb"]
    assert (target / "saved_model.pb").read_text() == "previous export"

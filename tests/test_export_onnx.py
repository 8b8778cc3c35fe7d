"""The ONNX export in onnxruntime: the Keras model's detections, as sets, on real images.

Optional (``pip install -c constraints.txt '.[onnx]'``; ``make test-onnx`` runs
``pytest -m onnx``): skipped without tf2onnx and onnxruntime. The quickstart's
network before training (the vendored ImageNet MobileNetV2, random heads) on
BCCD test images, both at the model's size (against the Keras inference model)
and at their own 640 x 480 (resized in the graph; against the TF serving
function, the SavedModel's graph). Not `export_testing.make_detector`: its
random backbone with calibrated BatchNorms amplifies the last-bit differences
of onnxruntime's convolutions to 4e-4 in the scores; the ImageNet one keeps
them at ~2e-7, as the trained quickstart checkpoint does (exporters/README.md).

Budget: ~70 s of CPU on 2 cores (two fp32 and an fp16 conversion; 4.5 min wall on the loaded machine).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import export_testing

pytestmark = pytest.mark.onnx
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install '.[onnx]')")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from exporters import accuracy, common, onnx, runtime  # noqa: E402

CLASS_NAMES = ("RBC", "WBC", "Platelets")
# Untrained heads score every class ~0.28: a low threshold keeps 50 per image.
DECODER = {"score_threshold": 0.01, "max_detections": 50}


@pytest.fixture(scope="module")
def detector():
    import keras

    from keras_scb.models import build_detector

    keras.utils.set_random_seed(0)
    return build_detector("mobilenetv2-ssdlite300", len(CLASS_NAMES))


@pytest.fixture(scope="module")
def bccd_images():
    """Four BCCD test images, uint8 ``(4, 480, 640, 3)`` as stored."""
    from keras_scb.data import load_bccd

    records = load_bccd("test").records[:4]
    return np.stack([tf.io.decode_jpeg(tf.io.read_file(r.image)).numpy() for r in records])


@pytest.fixture(scope="module")
def fp32_path(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return onnx.export_onnx(detector, path, "fp32", CLASS_NAMES, **DECODER)


@pytest.fixture(scope="module")
def fp32(fp32_path):
    return runtime.load_runner(fp32_path)


def test_model_size_images_match_keras(detector, fp32, bccd_images):
    images = runtime.resize_images(bccd_images, detector.image_size)
    expected = export_testing.keras_detections(detector, images, **DECODER)
    export_testing.assert_same_detections(fp32(images), expected, score_atol=1e-4)


def test_original_size_images_match_the_serving_graph(detector, fp32, bccd_images):
    """uint8 640 x 480 in, resized by the ONNX graph as by the SavedModel's."""
    serve = tf.function(common.serving_function(detector, resize=True, **DECODER))
    expected = {k: v.numpy() for k, v in serve(tf.constant(bccd_images)).items()}
    export_testing.assert_same_detections(fp32(bccd_images), expected, score_atol=1e-4)


def test_fp16_matches_keras_as_sets(detector, bccd_images):
    model = onnx.convert(detector, "fp16", CLASS_NAMES, **DECODER)
    kernels = [t for t in model.graph.initializer if t.name.endswith("_fp16")]
    assert kernels and all(t.data_type == 10 for t in kernels)  # TensorProto.FLOAT16
    images = runtime.resize_images(bccd_images, detector.image_size)
    expected = export_testing.keras_detections(detector, images, **DECODER)
    agreement = accuracy.detection_agreement(
        expected, runtime.OnnxDetector(model.SerializeToString())(images)
    )
    assert agreement["count"] == 40
    # Measured: 40/40 top-10 detections matched (same class, IoU >= 0.5), mean IoU 0.998.
    assert agreement["matched"] == 1.0 and agreement["mean_iou"] >= 0.99


def test_interface_and_metadata(fp32_path, detector):
    session = onnxruntime.InferenceSession(os.fspath(fp32_path), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert (image.name, image.type) == (onnx.INPUT_NAME, "tensor(uint8)")
    assert len(image.shape) == 4 and image.shape[3] == 3
    assert not any(isinstance(d, int) for d in image.shape[:3])  # any batch and size
    assert sorted(o.name for o in session.get_outputs()) == sorted(common.DETECTION_KEYS)
    props = session.get_modelmeta().custom_metadata_map
    assert props[onnx.LABELS_KEY].splitlines() == list(CLASS_NAMES)
    described = json.loads(props[common.METADATA_NAME])
    assert described["class_names"] == list(CLASS_NAMES)
    assert described["image_size"] == detector.image_size
    assert described["decoder"] == DECODER
    assert props["class_ids"] == "0-based"
    labels = os.path.join(os.path.dirname(fp32_path), common.LABELS_FILE)
    with open(labels) as f:
        assert f.read().splitlines() == list(CLASS_NAMES)


def test_runtime_crash_fails_the_export(detector, tmp_path, monkeypatch):
    """The file is loaded in a child process before it takes its name: a crash
    there fails the export and leaves nothing behind."""
    crash = tmp_path / "abort.py"
    crash.write_text("import os\nos.abort()\n")
    monkeypatch.setattr(runtime, "SMOKE_LOAD_SCRIPT", str(crash))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(runtime.SmokeLoadError, match=r"onnxruntime .* crashed \(SIGABRT\) loading .*m.onnx"):
        onnx.export_onnx(detector, out / "m.onnx", class_names=CLASS_NAMES, **DECODER)
    assert sorted(os.listdir(out)) == []


def test_accuracy_rows_for_onnx(detector, fp32_path):
    """`exporters.accuracy` exports ONNX itself (``onnx``) and takes an exported file."""
    from keras_scb.data import load_bccd

    path = os.fspath(fp32_path)
    rows = accuracy.compare_precisions(
        detector, load_bccd("test"), precisions=("onnx",), max_images=2, top_k=20,
        exports=(path,), **DECODER,
    )
    assert set(rows) == {"keras", "onnx", path}
    for name in ("onnx", path):
        agreement = rows[name]["agreement"]
        assert agreement["count"] == 40 and agreement["matched"] == 1.0
        assert agreement["max_score_diff"] <= 1e-4
        assert abs(rows[name]["voc07_mAP_drop"]) <= 1e-3

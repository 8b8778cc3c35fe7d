"""The exporter command lines end to end (slow: each starts TensorFlow; ~2 min)."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import export_testing
from exporters import common, runtime
from keras_scb.losses import ScaleBalancedLoss

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_dir")
    export_testing.save_checkpoint(export_testing.make_detector(seed=0), folder / "best.keras", ScaleBalancedLoss())
    export_testing.save_checkpoint(export_testing.make_detector(seed=1), folder / "other.keras")
    common.write_labels(("a", "b", "c"), folder / common.LABELS_FILE)
    return folder


def _run(*args):
    done = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _score_threshold():
    return f"--score_threshold={export_testing.DECODER['score_threshold']}"


def test_saved_model_cli(model_dir, tmp_path):
    out = tmp_path / "saved_model"
    assert "detect_zero_based" in _run("exporters.saved_model", f"--checkpoint={model_dir / 'best.keras'}",
                                       f"--output={out}", _score_threshold())
    assert common.read_class_names(out) == ("a", "b", "c")
    images = export_testing.images(2, seed=5)
    served = runtime.SavedModelDetector(out)(images)
    keras = runtime.KerasDetector(model_dir / "best.keras", score_threshold=0.3)(images)
    export_testing.assert_same_detections(served, keras, box_atol=1e-5, score_atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tflite_cli(model_dir, tmp_path, precision):
    out = tmp_path / "model.tflite"
    stdout = _run("exporters.tflite", f"--checkpoint={model_dir / 'best.keras'}", f"--output={out}",
                  f"--precision={precision}", "--representative_data=synthetic",
                  "--representative_count=8")
    assert "builtin ops only" in stdout
    assert sorted(os.listdir(tmp_path)) == ["labels.txt", "model.tflite"]
    result = runtime.TFLiteDetector(out)(export_testing.images(1))
    assert result["detection_boxes"].shape == (1, 200, 4)


def test_compare_cost_cli(model_dir, tmp_path):
    report_path = tmp_path / "cost.json"
    stdout = _run("exporters.compare_cost", model_dir / "other.keras", model_dir / "best.keras",
                  "--rounds=1", "--runs_per_round=1", "--threads=1", f"--output_json={report_path}")
    assert "ratio" in stdout
    with open(report_path) as f:
        report = json.load(f)
    assert report["same_ops"] and report["same_size"] and not report["identical_bytes"]


def test_accuracy_takes_the_shared_data_flags():
    """``--dataset`` is the tools' one enum (a bad name is a usage error naming it,
    not a KeyError); ``--split``, its old flag, now ``--val_split``, clashes with it."""
    bad = subprocess.run([sys.executable, "-m", "exporters.accuracy", "--checkpoint=x.keras",
                          "--dataset=coco_subsett"], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--dataset" in bad.stderr and "coco_subset" in bad.stderr, bad.stderr[-2000:]
    both = subprocess.run([sys.executable, "-m", "exporters.accuracy", "--checkpoint=x.keras",
                           "--split=test", "--val_split=test"], capture_output=True, text=True,
                          timeout=600)
    assert "exporters.accuracy: error: --split is the old name of --val_split; give --val_split " \
           "only." in both.stderr, both.stderr[-2000:]


def test_accuracy_cli(model_dir, tmp_path):
    rows_path = tmp_path / "rows.json"
    stdout = _run("exporters.accuracy", f"--checkpoint={model_dir / 'best.keras'}", "--max_images=4",
                  "--precisions=fp32", f"--output_json={rows_path}")
    assert "VOC07 mAP" in stdout
    with open(rows_path) as f:
        rows = json.load(f)
    # fp32 reproduces the Keras detections, hence its metrics.
    assert rows["fp32"]["voc07_mAP"] == pytest.approx(rows["keras"]["voc07_mAP"], abs=1e-3)
    assert rows["fp32"]["agreement"]["matched"] == 1.0


def test_predict_cli_on_saved_model(model_dir, tmp_path):
    export = tmp_path / "saved_model"
    _run("exporters.saved_model", f"--checkpoint={model_dir / 'best.keras'}", f"--output={export}")
    image = tmp_path / "image.png"
    tf.io.write_file(str(image), tf.io.encode_png(export_testing.images(1, size=200)[0]))
    _run("exporters.predict", f"--checkpoint={export}", f"--images={image}", f"--output_dir={tmp_path / 'out'}",
         "--score_threshold=0.5")
    with open(tmp_path / "out" / "detections.json") as f:
        (result,) = json.load(f)
    assert result["width"] == 200 and os.path.isfile(result["png"])
    assert {d["class_name"] for d in result["detections"]} <= {"a", "b", "c"}

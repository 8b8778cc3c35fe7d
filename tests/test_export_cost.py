"""Unchanged inference cost: the loss a checkpoint was compiled with never reaches
its export, and two detectors of one architecture export to the same graph.

Budget: ~45 s on 2 cores (two detectors, three conversions).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import export_testing
from exporters import common, compare_cost, flatbuffer, tflite
from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss


# Keras 3.15 loading weights under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One set of weights saved compiled with each loss, and other weights with SCB."""
    folder = tmp_path_factory.mktemp("checkpoints")
    detector = export_testing.make_detector(seed=0)
    paths = {
        "multibox": export_testing.save_checkpoint(detector, folder / "multibox.keras", MultiBoxLoss()),
        "scb": export_testing.save_checkpoint(detector, folder / "scb.keras", ScaleBalancedLoss()),
    }
    other = export_testing.make_detector(seed=1)
    paths["scb_other_weights"] = export_testing.save_checkpoint(
        other, folder / "other.keras", ScaleBalancedLoss()
    )
    return paths


@pytest.fixture(scope="module")
def report(checkpoints):
    """compare_cost on the same weights compiled with MultiBoxLoss and with SCB."""
    baseline, candidate = (common.load_detector(checkpoints[k]) for k in ("multibox", "scb"))
    return compare_cost.compare(
        baseline, candidate, threads=(1, 2), rounds=2, runs_per_round=2, **export_testing.DECODER
    )


def test_checkpoints_remember_their_loss(checkpoints):
    # Otherwise the test below would compare two identical files.
    losses = {
        name: type(keras.saving.load_model(path).loss).__name__
        for name, path in checkpoints.items() if name != "scb_other_weights"
    }
    assert losses == {"multibox": "MultiBoxLoss", "scb": "ScaleBalancedLoss"}


def test_tflite_bytes_do_not_depend_on_the_loss(report):
    assert report["identical_bytes"]
    assert report["same_ops"] and report["same_size"] and report["same_constants"]


def test_no_loss_in_exported_graphs(report):
    for cost in report["static"].values():
        assert cost["loss_traces"] == []


def test_loss_traces_finds_a_loss():
    """The check above can fail: a graph computing SCB's per-object counts is caught."""

    @tf.function(input_signature=[tf.TensorSpec((8,), tf.float32), tf.TensorSpec((8,), tf.int32)])
    def counts(values, segments):
        return tf.math.unsorted_segment_sum(values, segments, 4, name="matched_loss")

    model = tf.lite.TFLiteConverter.from_concrete_functions(
        [counts.get_concrete_function()], counts
    ).convert()
    assert compare_cost.loss_traces(model)


def test_same_architecture_other_weights(checkpoints, report):
    other = common.load_detector(checkpoints["scb_other_weights"])
    model = tflite.convert(other, "fp32", **export_testing.DECODER)
    cost = compare_cost.static_cost(model, other)
    baseline = report["static"]["baseline"]
    assert cost["sha256"] != baseline["sha256"]
    for key in ("ops", "constant_elements", "keras_parameters", "file_bytes"):
        assert cost[key] == baseline[key], key


def test_parameter_counts_agree(report, checkpoints):
    cost = report["static"]["baseline"]
    detector = common.load_detector(checkpoints["multibox"])
    assert cost["keras_parameters"] == detector.count_params()
    # Stored constants: every BatchNorm (4 vectors) folded into its convolution
    # (1 bias vector), plus the anchors, the per-class box shifts of the NMS
    # (C x pre_nms_top_k) and a few scalars.
    layers = [
        layer for layer in detector._flatten_layers(include_self=False)
        if not isinstance(layer, keras.Model)
    ]
    folded = sum(
        int(np.prod(w.shape)) // 4 if isinstance(layer, keras.layers.BatchNormalization)
        else int(np.prod(w.shape))
        for layer in layers for w in layer.weights
    )
    extra = cost["constant_elements"]["FLOAT32"] - folded
    shifts = export_testing.NUM_CLASSES * 400
    assert detector.anchors.size <= extra <= detector.anchors.size + shifts + 100, extra


def test_latency_is_measured_interleaved(report):
    for key in ("latency", "network_latency"):
        for threads in (1, 2):
            summary = report[key][threads]
            assert summary["invokes"] == {"baseline": 4, "scb": 4}
            medians = summary["median_ms"]
            assert summary["ratio"] == pytest.approx(medians["scb"] / medians["baseline"])
    assert report["same_network_ops"]
    assert "ratio" in compare_cost.markdown(report)


def test_latency_summary():
    times = {"baseline": [0.010, 0.030, 0.020], "scb": [0.021, 0.019, 0.022]}
    summary = compare_cost.latency_summary(times, "baseline", "scb")
    assert summary["median_ms"] == pytest.approx({"baseline": 20.0, "scb": 21.0})
    assert summary["ratio"] == pytest.approx(1.05)

"""A checkpoint trained under mixed precision exports as float32."""

import keras
import numpy as np

from exporters.common import load_detector
from keras_scb.models import build_detector


def test_mixed_bfloat16_checkpoint_loads_as_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        trained = build_detector("mobilenetv2-ssdlite300", 3, width_multiplier=0.35, backbone_weights=None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = str(tmp_path / "bf16.keras")
    trained.save(path)

    detector = load_detector(path)
    policies = {layer.dtype_policy.name for layer in detector._flatten_layers()}
    assert policies == {"float32"}
    for a, b in zip(trained.get_weights(), detector.get_weights()):
        np.testing.assert_array_equal(a, b)
    images = np.random.default_rng(0).uniform(0, 255, (1, 300, 300, 3)).astype("float32")
    full = np.asarray(detector.predict_raw_on_batch(images))
    half = np.asarray(trained.predict_raw_on_batch(images))
    # Same network: only bfloat16 rounding separates the two.
    assert np.abs(full - half).max() < 0.05 * max(1.0, np.abs(full).max())

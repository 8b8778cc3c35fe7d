"""DSSD: deconvolution and prediction modules, network shape, training, saving, weights."""

import keras
import numpy as np
import pytest

from keras_scb.anchors import get_anchor_spec
from keras_scb.losses import ScaleBalancedLoss
from keras_scb.matching import encode_targets
from keras_scb.models import Detector, build_detector
from keras_scb.models.dssd import (
    deconvolution_module,
    prediction_module,
    resnet101_backbone,
)

NUM_CLASSES = 3


def _randomise_batch_norms(model, rng):
    """Non-trivial inference statistics, so BatchNorm is not almost the identity."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape), rng.normal(size=beta.shape),
                rng.normal(size=mean.shape), rng.uniform(0.5, 2.0, var.shape),
            ])


def _conv_same(x, kernel, bias=0.0):
    """numpy 'same' stride-1 convolution, (H, W, C) * (k, k, C, F)."""
    k = kernel.shape[0]
    padded = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    out = np.zeros(x.shape[:2] + kernel.shape[-1:])
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.tensordot(padded[i:i + k, j:j + k], kernel, axes=3)
    return out + bias


def _conv_bn(model, x, name):
    """numpy reference of the module's ``{name}_conv`` then ``{name}_bn`` (inference)."""
    (kernel,) = model.get_layer(f"{name}_conv").get_weights()
    bn = model.get_layer(f"{name}_bn")
    gamma, beta, mean, var = bn.get_weights()
    return gamma * (_conv_same(x, kernel) - mean) / np.sqrt(var + bn.epsilon) + beta


def test_deconvolution_module_multiplies_the_two_paths():
    """numpy reference of Fig. 3 (deconv 3x3 -> 5x5 with the surplus row cropped)."""
    rng = np.random.default_rng(0)
    deep_in, shallow_in = keras.Input((3, 3, 4)), keras.Input((5, 5, 2))
    out = deconvolution_module(deep_in, shallow_in, filters=3, name="d")
    model = keras.Model([deep_in, shallow_in], out)
    _randomise_batch_norms(model, rng)
    deep = rng.normal(size=(1, 3, 3, 4)).astype(np.float32)
    shallow = rng.normal(size=(1, 5, 5, 2)).astype(np.float32)
    got = model.predict([deep, shallow], verbose=0)[0]

    kernel, bias = model.get_layer("d_up_deconv").get_weights()  # (2, 2, out, in)
    assert kernel.shape[:2] == (2, 2)
    up = np.zeros((6, 6, 3))
    for i in range(3):
        for j in range(3):
            up[2 * i:2 * i + 2, 2 * j:2 * j + 2] += np.einsum("c,hwoc->hwo", deep[0, i, j], kernel)
    up = _conv_bn(model, up[:5, :5] + bias, "d_up")
    lateral = np.maximum(_conv_bn(model, shallow[0], "d_lateral_a"), 0)
    lateral = _conv_bn(model, lateral, "d_lateral_b")
    np.testing.assert_allclose(got, np.maximum(up * lateral, 0), rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, np.maximum(up + lateral, 0), atol=1e-2)


def test_deconvolution_module_sizes():
    for deep, shallow in [(1, 3), (3, 5), (3, 6), (11, 21), (33, 65)]:
        out = deconvolution_module(keras.Input((deep, deep, 8)), keras.Input((shallow, shallow, 4)),
                                   filters=8, name=f"d{deep}_{shallow}")
        assert out.shape[1:] == (shallow, shallow, 8)
    with pytest.raises(ValueError, match="upsample"):
        deconvolution_module(keras.Input((3, 3, 8)), keras.Input((8, 8, 4)), filters=8)


def test_prediction_module_is_a_residual_block():
    rng = np.random.default_rng(1)
    inputs = keras.Input((2, 2, 5))
    model = keras.Model(inputs, prediction_module(inputs, name="p"))
    _randomise_batch_norms(model, rng)
    x = rng.normal(size=(1, 2, 2, 5)).astype(np.float32)
    got = model.predict(x, verbose=0)[0]

    y = np.maximum(_conv_bn(model, x[0], "p_a"), 0)
    y = _conv_bn(model, np.maximum(_conv_bn(model, y, "p_b"), 0), "p_c")
    want = np.maximum(_conv_bn(model, x[0], "p_shortcut") + y, 0)
    assert got.shape == (2, 2, 1024)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _check_network(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_detector(name, NUM_CLASSES)
    spec = get_anchor_spec(name)
    assert isinstance(model, Detector) and model.anchor_spec == spec
    assert model.output_shape == (None, spec.num_anchors(), 4 + NUM_CLASSES + 1)

    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss=ScaleBalancedLoss(),
                  jit_compile=False)
    size = model.image_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    lo = rng.uniform(0, 0.5, (1, 2, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.5, (1, 2, 2))], -1).astype(np.float32)
    targets = encode_targets(boxes, [[0, 2]], model.anchors).numpy()
    before = keras.ops.convert_to_numpy(model(images))
    history = model.fit(images, targets, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = keras.ops.convert_to_numpy(model(images))
    assert not np.allclose(before, after), "the train step changed nothing"

    path = tmp_path / f"{name}.keras"
    model.save(str(path))
    loaded = keras.saving.load_model(str(path))
    path.unlink()  # ~0.4 GB
    assert isinstance(loaded, Detector) and loaded.anchor_spec == spec
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), after)


def test_dssd321(tmp_path):
    _check_network("dssd321", tmp_path)


@pytest.mark.slow
def test_dssd513(tmp_path):
    _check_network("dssd513", tmp_path)


def test_backbone_weights_from_a_file(tmp_path):
    """Weights do not depend on the input size: a small input keeps this fast."""
    source = keras.applications.ResNet101(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "resnet101.weights.h5"
    source.save_weights(str(path))
    backbone = resnet101_backbone(64, str(path))
    path.unlink()
    for name in ("conv1_conv", "conv3_block4_3_bn", "conv5_block3_3_conv"):
        for want, got in zip(source.get_layer(name).get_weights(),
                             backbone.get_layer(name).get_weights()):
            np.testing.assert_array_equal(want, got)
    with pytest.raises(ValueError, match="backbone_weights"):
        resnet101_backbone(64, str(tmp_path / "missing.weights.h5"))

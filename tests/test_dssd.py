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

from anchor_order_testing import assert_heads_follow_anchor_order

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
    """numpy reference of Fig. 3 (kernel-3 stride-1 deconvolution 3x3 -> 5x5, as at 321)."""
    rng = np.random.default_rng(0)
    deep_in, shallow_in = keras.Input((3, 3, 4)), keras.Input((5, 5, 2))
    out = deconvolution_module(deep_in, shallow_in, 3, 1, filters=3, name="d")
    model = keras.Model([deep_in, shallow_in], out)
    _randomise_batch_norms(model, rng)
    deep = rng.normal(size=(1, 3, 3, 4)).astype(np.float32)
    shallow = rng.normal(size=(1, 5, 5, 2)).astype(np.float32)
    got = model.predict([deep, shallow], verbose=0)[0]

    kernel, bias = model.get_layer("d_up_deconv").get_weights()  # (3, 3, out, in)
    assert kernel.shape[:2] == (3, 3)
    up = np.zeros((5, 5, 3))
    for i in range(3):
        for j in range(3):
            up[i:i + 3, j:j + 3] += np.einsum("c,hwoc->hwo", deep[0, i, j], kernel)
    up = _conv_bn(model, up + bias, "d_up")
    lateral = np.maximum(_conv_bn(model, shallow[0], "d_lateral_a"), 0)
    lateral = _conv_bn(model, lateral, "d_lateral_b")
    np.testing.assert_allclose(got, np.maximum(up * lateral, 0), rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, np.maximum(up + lateral, 0), atol=1e-2)


def test_deconvolution_module_sizes():
    """The official scripts' deconvolutions: (kernel, stride) and the sizes they join."""
    for deep, shallow, kernel, stride in [(1, 3, 3, 1), (3, 5, 3, 1), (5, 10, 2, 2),
                                          (1, 2, 2, 1), (32, 64, 2, 2)]:
        out = deconvolution_module(keras.Input((deep, deep, 8)), keras.Input((shallow, shallow, 4)),
                                   kernel, stride, filters=8, name=f"d{deep}_{shallow}")
        assert out.shape[1:] == (shallow, shallow, 8)
    with pytest.raises(ValueError, match="cannot upsample"):
        deconvolution_module(keras.Input((3, 3, 8)), keras.Input((7, 7, 4)), 2, 2, filters=8)


def test_prediction_module_is_a_residual_block():
    """1x1-3x3-1x1 (256, 256, 1024) plus a 1x1 projection shortcut, as ``ResBody``."""
    rng = np.random.default_rng(1)
    inputs = keras.Input((3, 3, 5))
    model = keras.Model(inputs, prediction_module(inputs, name="p"))
    _randomise_batch_norms(model, rng)
    x = rng.normal(size=(1, 3, 3, 5)).astype(np.float32)
    got = model.predict(x, verbose=0)[0]

    y = np.maximum(_conv_bn(model, x[0], "p_branch2a"), 0)
    y = np.maximum(_conv_bn(model, y, "p_branch2b"), 0)
    assert model.get_layer("p_branch2b_conv").kernel.shape[:2] == (3, 3)
    y = _conv_bn(model, y, "p_branch2c")
    want = np.maximum(_conv_bn(model, x[0], "p_branch1") + y, 0)
    assert got.shape == (3, 3, 1024)
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
    assert_heads_follow_anchor_order(loaded)


@pytest.mark.slow  # a 172 M-parameter build (~25 s), a train step and a 0.7 GB save
def test_dssd321(tmp_path):
    _check_network("dssd321", tmp_path)


@pytest.mark.slow
def test_dssd513(tmp_path):
    _check_network("dssd513", tmp_path)


def test_backbone_weights_from_a_file(tmp_path):
    """Weights do not depend on the input size: a small input keeps this fast.

    At 65 pixels the official ``ResNet101Body(use_dilation_conv5=True)`` gives
    res3b3 8x8 (keras's padded pool1 would give 9x9) and res5c 4x4 (stride 16).
    """
    source = keras.applications.ResNet101(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "resnet101.weights.h5"
    source.save_weights(str(path))
    backbone = resnet101_backbone(65, str(path))
    path.unlink()
    assert [tuple(o.shape[1:]) for o in backbone.outputs] == [(8, 8, 512), (4, 4, 2048)]
    assert backbone.get_layer("conv5_block2_2_conv").dilation_rate == (2, 2)
    for name in ("conv1_conv", "conv3_block4_3_bn", "conv5_block3_3_conv"):
        for want, got in zip(source.get_layer(name).get_weights(),
                             backbone.get_layer(name).get_weights()):
            np.testing.assert_array_equal(want, got)
    with pytest.raises(ValueError, match="backbone_weights"):
        resnet101_backbone(64, str(tmp_path / "missing.weights.h5"))

"""Pretrained initialisation as the original implementations.

VGG16 detectors start from ImageNet VGG16 with SSD's reduced fc6/fc7 (fc1/fc2
subsampled), DSSD from ImageNet ResNet-101, both fed Caffe-normalised input;
"imagenet" comes from Keras's cache, and offline without it a run stops before
reading data. The new layers follow ssd.pytorch's initialisation.
"""

import hashlib
import os

import keras
import numpy as np
import pytest

from keras_scb.models import backbones, build_detector
from keras_scb.models.layers import CaffeImageNetNormalization, L2Normalization


NUM_CLASSES = 3
# urllib reads the proxy from the environment on each request: every download
# attempt is refused at once by this closed local port instead of reaching (or
# waiting for) the internet.
def _go_offline(monkeypatch, keras_home):
    for name in ("https_proxy", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(keras_home))


def test_reduced_fc6_fc7_subsamples_fc1_fc2_in_keras_flatten_order():
    side, channels, units = 7, 5, 16
    rng = np.random.default_rng(0)
    fc1 = [rng.normal(size=(side * side * channels, units)), rng.normal(size=units)]
    fc2 = [rng.normal(size=(units, units)), rng.normal(size=units)]
    (k6, b6), (k7, b7) = backbones.reduced_fc6_fc7(fc1, fc2)
    assert k6.shape == (3, 3, channels, units // 4) and b6.shape == (units // 4,)
    assert k7.shape == (1, 1, units // 4, units // 4) and b7.shape == (units // 4,)

    # The reshape order: fc1 applied to keras's Flatten of a (7, 7, C) map is
    # the 7x7 conv with kernel fc1.reshape(7, 7, C, N) applied to the map.
    pool5 = rng.normal(size=(1, side, side, channels)).astype("float32")
    flat = keras.ops.convert_to_numpy(keras.layers.Flatten()(pool5))
    full_kernel = fc1[0].reshape(side, side, channels, units)
    np.testing.assert_allclose(
        flat @ fc1[0], np.einsum("bhwc,hwcn->bn", pool5, full_kernel), rtol=1e-10
    )
    # Taps 0, 3, 6 of the window, every 4th unit, element by element.
    for i in range(3):
        for j in range(3):
            for c in range(channels):
                for o in range(units // 4):
                    row = (3 * i * side + 3 * j) * channels + c
                    assert k6[i, j, c, o] == fc1[0][row, 4 * o]
    for i in range(units // 4):
        for o in range(units // 4):
            assert k7[0, 0, i, o] == fc2[0][4 * i, 4 * o]
    np.testing.assert_array_equal(b6, fc1[1][::4])
    np.testing.assert_array_equal(b7, fc2[1][::4])


@pytest.fixture(scope="module")
def random_vgg16_file(tmp_path_factory):
    """Random with-top VGG16 (138 M parameters) saved as ``.weights.h5`` (~0.55 GB)."""
    keras.utils.set_random_seed(1)
    source = keras.applications.VGG16(include_top=True, weights=None)
    path = tmp_path_factory.mktemp("vgg16") / "vgg16_with_top.weights.h5"
    source.save_weights(str(path))
    expected = {
        layer.name: layer.get_weights()
        for layer in source.layers
        if layer.weights and ("_conv" in layer.name or layer.name in ("fc1", "fc2"))
    }
    del source
    yield str(path), expected
    path.unlink()


def _check_vgg16_initialisation(name, random_vgg16_file):
    path, expected = random_vgg16_file
    model = build_detector(name, NUM_CLASSES, backbone_weights=path)
    for layer_name, weights in expected.items():
        if layer_name.startswith("block"):
            for want, got in zip(weights, model.get_layer(layer_name).get_weights()):
                np.testing.assert_array_equal(got, want)
    # An independent numpy decimation of the saved fc1/fc2.
    fc1_kernel, fc1_bias = expected["fc1"]
    fc2_kernel, fc2_bias = expected["fc2"]
    fc6_kernel, fc6_bias = model.get_layer("fc6").get_weights()
    fc7_kernel, fc7_bias = model.get_layer("fc7").get_weights()
    taps = [0, 3, 6]
    want_fc6 = np.stack([
        np.stack([fc1_kernel[(7 * h + w) * 512:(7 * h + w + 1) * 512, 0::4] for w in taps])
        for h in taps
    ])
    np.testing.assert_array_equal(fc6_kernel, want_fc6)
    np.testing.assert_array_equal(fc6_bias, fc1_bias[np.arange(0, 4096, 4)])
    np.testing.assert_array_equal(fc7_kernel[0, 0], fc2_kernel[0::4][:, 0::4])
    np.testing.assert_array_equal(fc7_bias, fc2_bias[np.arange(0, 4096, 4)])


@pytest.mark.slow  # ~0.5 GB file, ~3 GB of memory, ~30 s on two busy cores
@pytest.mark.parametrize("name", ["ssd300", "fssd300", "refinedet320"])
def test_vgg16_detectors_start_from_vgg16_with_reduced_fc(name, random_vgg16_file):
    _check_vgg16_initialisation(name, random_vgg16_file)


def test_a_vgg16_file_without_top_is_refused_by_name(tmp_path):
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    source.save_weights(path)
    with pytest.raises(ValueError, match="not a with-top VGG16 weights file") as error:
        build_detector("ssd300", NUM_CLASSES, backbone_weights=path)
    assert path in str(error.value) and "\n" not in str(error.value)


def test_imagenet_is_taken_from_the_keras_cache(tmp_path, monkeypatch):
    _go_offline(monkeypatch, tmp_path)
    cached = tmp_path / "models" / "tiny_weights.h5"
    cached.parent.mkdir()
    cached.write_bytes(b"weights")
    md5 = hashlib.md5(b"weights").hexdigest()
    found = backbones.KerasImageNetFile("tiny_weights.h5", "https://example.invalid/x", md5)
    assert backbones.weights_path("imagenet", found) == str(cached)
    # A cached file that fails Keras's md5 check is downloaded again: offline, an error.
    stale = backbones.KerasImageNetFile("tiny_weights.h5", "https://example.invalid/x", "0" * 32)
    with pytest.raises(RuntimeError, match="tiny_weights.h5"):
        backbones.weights_path("imagenet", stale)


@pytest.mark.parametrize(
    "name,file_name",
    [
        ("ssd300", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
        ("refinedet512", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
        ("dssd321", "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ],
)
def test_imagenet_offline_says_which_file_goes_where(name, file_name, tmp_path, monkeypatch):
    _go_offline(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError) as error:
        backbones.check_backbone_weights(name, "imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert file_name in message and str(tmp_path / "models") in message
    assert "--backbone_weights=PATH" in message


@pytest.mark.parametrize("name", ["ssd300", "dssd321"])
def test_imagenet_offline_fails_in_the_builder_too(name, tmp_path, monkeypatch):
    _go_offline(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match="needs .* in Keras's cache"):
        build_detector(name, NUM_CLASSES, backbone_weights="imagenet")


def test_offline_imagenet_stops_training_before_reading_data(tmp_path, monkeypatch):
    from keras_scb import train
    from keras_scb.config import DataConfig, TrainConfig

    def read_data(*args, **kwargs):
        raise AssertionError("the data was read before the weights were checked")

    _go_offline(monkeypatch, tmp_path)
    monkeypatch.setattr(DataConfig, "read_split", read_data)
    config = TrainConfig.from_args([
        "--model=ssd300", "--backbone_weights=imagenet", "--dataset=voc",
        "--data_dir=/nonexistent/VOC2007", f"--model_dir={tmp_path / 'run'}",
    ])
    with pytest.raises(ValueError, match="vgg16_weights_tf_dim_ordering_tf_kernels.h5"):
        train.train(config)
    assert not os.path.exists(tmp_path / "run")


def test_input_normalisation_is_what_the_imagenet_weights_expect():
    """Keras's VGG16 and ResNet weights take 'caffe' input: BGR minus the ImageNet mean."""
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(CaffeImageNetNormalization()(rgb))
    for preprocess in (keras.applications.vgg16.preprocess_input,
                       keras.applications.resnet.preprocess_input):
        np.testing.assert_allclose(ours, preprocess(rgb.copy()), atol=1e-4)
    for name in ("ssd300", "refinedet320"):
        model = build_detector(name, NUM_CLASSES, backbone_weights=None)
        preprocess = model.get_layer("preprocess")
        assert isinstance(preprocess, CaffeImageNetNormalization)
        assert preprocess.input is model.inputs[0]
        assert model.get_layer("block1_conv1").input is preprocess.output


@pytest.mark.slow
def test_dssd_feeds_resnet101_caffe_normalised_input():
    model = build_detector("dssd321", NUM_CLASSES, backbone_weights=None)
    preprocess = model.get_layer("preprocess")
    assert isinstance(preprocess, CaffeImageNetNormalization)
    assert preprocess.input is model.inputs[0]
    # A nested model's ``.input`` is its own; the call is in the model's config.
    layers = {layer["name"]: layer for layer in model.get_config()["layers"]}
    call = layers["resnet101_backbone"]["inbound_nodes"][0]["args"][0]
    assert call["config"]["keras_history"][0] == "preprocess"


def test_l2_norm_and_new_layer_initialisers_follow_the_references():
    keras.utils.set_random_seed(0)
    ssd = build_detector("ssd300", NUM_CLASSES, backbone_weights=None)
    norm = ssd.get_layer("conv4_3_norm")
    # ssd.pytorch / Caffe SSD: L2Norm(512, 20), one learnable scale per channel.
    assert isinstance(norm, L2Normalization) and norm.scale.trainable
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.scale), np.full(512, 20.0))
    # RefineDet (Caffe): conv4_3 at 10, conv5_3 at 8.
    refinedet = build_detector("refinedet320", NUM_CLASSES, backbone_weights=None)
    for name, scale in (("conv4_3_norm", 10.0), ("conv5_3_norm", 8.0)):
        weights = keras.ops.convert_to_numpy(refinedet.get_layer(name).scale)
        np.testing.assert_array_equal(weights, np.full(512, scale))
    # ssd.pytorch: extras, loc and conf convs xavier_uniform with zero bias
    # (Keras's glorot_uniform is the same distribution).
    new_convs = [
        layer for layer in ssd.layers
        if isinstance(layer, keras.layers.Conv2D)
        and (layer.name.startswith(("conv6", "conv7", "conv8", "conv9", "head_")))
    ]
    assert len(new_convs) == 8 + 6
    for layer in new_convs:
        assert isinstance(layer.kernel_initializer, keras.initializers.GlorotUniform), layer.name
        assert isinstance(layer.bias_initializer, keras.initializers.Zeros), layer.name
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bias), 0.0)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        fan_in = np.prod(kernel.shape[:-1])
        fan_out = np.prod(kernel.shape[:2]) * kernel.shape[-1]
        # Uniform on +-limit: the largest of >= 70,000 draws is within 1 % of it
        # (not Caffe's "xavier" sqrt(3 / fan_in), nor He's); float32 rounding aside.
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert 0.99 * limit <= np.abs(kernel).max() <= limit * (1 + 1e-6), layer.name


def test_every_detector_with_an_imagenet_backbone_file_is_checked_at_start_up():
    from keras_scb.models import available_detectors, detector_entry

    # The library's detectors only: tests register their own (test_toy_detector's
    # registration runs when pytest collects that module).
    library = {
        name for name in available_detectors()
        if detector_entry(name).builder.__module__.startswith("keras_scb.")
    }
    unchecked = library - set(backbones._IMAGENET_FILES)
    assert unchecked and all(name.startswith("mobilenetv2") for name in unchecked), unchecked


@pytest.mark.parametrize("weights", ["/nonexistent/vgg16.h5", "vendored"])
def test_a_bad_backbone_weights_value_is_named_at_start_up(weights):
    with pytest.raises(ValueError, match=f"got {weights!r}"):
        backbones.check_backbone_weights("ssd300", weights)
    backbones.check_backbone_weights("ssd300", None)
    backbones.check_backbone_weights("mobilenetv2-ssdlite300", "vendored")

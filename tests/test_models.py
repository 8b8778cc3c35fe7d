"""Detector networks: shapes, anchor order, parameter counts, training, saving, JAX."""

import os
import sys

import keras
import numpy as np
import pytest

from keras_scb.anchors import AnchorSpec, get_anchor_spec, get_anchors
from keras_scb.losses import ScaleBalancedLoss
from keras_scb.matching import encode_targets
from keras_scb.models import Detector, available_detectors, build_detector
from keras_scb.models import backbones
from keras_scb.models.heads import check_feature_maps, multibox_head
from keras_scb.models.layers import L2Normalization

NUM_CLASSES = 3
# name -> default anchor preset
MODELS = {
    "ssd300": "ssd300",
    "ssd512": "ssd512",
    "fssd300": "fssd300",
    "fssd512": "fssd512",
    "mobilenetv2-ssdlite300": "ssdlite300",
    "mobilenetv2-ssdlite320": "ssdlite320",
}
FAST_MODELS = ["ssd300", "fssd300", "mobilenetv2-ssdlite300", "mobilenetv2-ssdlite320"]
SLOW_MODELS = ["ssd512", "fssd512"]


def random_images(model, batch=1, seed=0):
    size = model.image_size
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


def random_targets(model, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 0.5, (batch, 2, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.5, (batch, 2, 2))], -1)
    classes = rng.integers(0, NUM_CLASSES, (batch, 2))
    return encode_targets(boxes.astype(np.float32), classes, model.anchors).numpy()


def test_registry_lists_every_model_and_rejects_unknown_names():
    assert set(MODELS) <= set(available_detectors())
    with pytest.raises(ValueError, match="available: .*ssd300"):
        build_detector("ssd301", NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_and_anchors_follow_the_preset(name):
    model = build_detector(name, NUM_CLASSES, backbone_weights=None)
    preset = MODELS[name]
    assert isinstance(model, Detector)
    assert model.output_shape == (None, get_anchor_spec(preset).num_anchors(), 4 + NUM_CLASSES + 1)
    assert model.input_shape == (None, model.image_size, model.image_size, 3)
    np.testing.assert_array_equal(model.anchors, get_anchors(preset))
    assert model.num_classes == NUM_CLASSES


def test_coco_anchors_argument():
    model = build_detector("ssd300", NUM_CLASSES, anchors="ssd300_coco")
    np.testing.assert_array_equal(model.anchors, get_anchors("ssd300_coco"))


def test_feature_maps_must_fit_the_anchor_spec():
    with pytest.raises(ValueError, match=r"feature maps are \[\(38, 38\).*expects \[\(64, 64\)"):
        build_detector("ssd300", NUM_CLASSES, anchors="ssd512")
    maps = [keras.Input((s, s, 8)) for s in (5, 3)]
    spec = AnchorSpec(64, (5, 2), (10, 20), None, ((2,), (2,)))
    with pytest.raises(ValueError, match="expects"):
        check_feature_maps(maps, spec)


def _conv_params(kernel, cin, cout, bias=True):
    return kernel * kernel * cin * cout + (cout if bias else 0)


def test_ssd300_parameter_count():
    """Counted layer by layer from the paper's architecture; ~26.3 M at 21 classes."""
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    expected = sum(_conv_params(3, cin, cout) for cin, cout in vgg)
    expected += _conv_params(3, 512, 1024) + _conv_params(1, 1024, 1024)  # fc6, fc7
    expected += 512  # conv4_3 L2Normalization scale
    extras = [(1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)]
    expected += sum(_conv_params(1, cin, mid) + _conv_params(3, mid, cout)
                    for cin, mid, cout in extras)
    head_inputs = [512, 1024, 512, 256, 256, 256]
    per_location = [4, 6, 6, 6, 4, 4]
    expected += sum(_conv_params(3, c, k * (4 + 21)) for c, k in zip(head_inputs, per_location))

    model = build_detector("ssd300", 20)
    assert model.count_params() == expected
    assert abs(model.count_params() - 26.3e6) < 0.05e6


def test_head_reshape_follows_anchor_order():
    """Output row of anchor (map i, y, x, a) = conv output of map i at (y, x), slot a."""
    rng = np.random.default_rng(1)
    sizes, per_location, depth = (4, 2), (3, 2), 4 + 2 + 1
    inputs = [keras.Input((s, s, 5)) for s in sizes]
    model = keras.Model(inputs, multibox_head(inputs, per_location, 2, name="h"))
    convs = keras.Model(inputs, [model.get_layer(f"h_{i}_pred").output for i in range(2)])
    features = [rng.normal(size=(2, s, s, 5)).astype(np.float32) for s in sizes]
    out = model.predict(features, verbose=0)
    maps = convs.predict(features, verbose=0)
    row = 0
    for i, (s, k) in enumerate(zip(sizes, per_location)):
        for y in range(s):
            for x in range(s):
                for a in range(k):
                    np.testing.assert_allclose(
                        out[:, row], maps[i][:, y, x, a * depth:(a + 1) * depth], rtol=1e-6
                    )
                    row += 1
    assert row == out.shape[1]


def test_separable_head_parameter_count():
    inputs = [keras.Input((3, 3, 16))]
    model = keras.Model(inputs, multibox_head(inputs, [6], 4, separable=True))
    depthwise, batch_norm, pointwise = 9 * 16, 4 * 16, _conv_params(1, 16, 6 * 9)
    assert model.count_params() == depthwise + batch_norm + pointwise


def test_l2_normalization_against_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)
    layer = L2Normalization(20.0)
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out, 20 * x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-5)
    assert layer.scale.shape == (8,) and layer.trainable_weights == [layer.scale]


def test_ssdlite_batchnorm_momentum_everywhere_and_saved(tmp_path):
    model = build_detector("mobilenetv2-ssdlite300", NUM_CLASSES, bn_momentum=0.9)
    path = str(tmp_path / "m.keras")
    model.save(path)
    for m in (model, keras.saving.load_model(path)):
        layers = [l for l in m._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
        assert len(layers) > 60  # backbone + extras + heads
        assert {l.momentum for l in layers} == {0.9}
        assert any(l.name.startswith("head_") for l in layers)


def test_mobilenet_v2_default_weights_are_the_vendored_ones():
    assert os.path.exists(backbones.VENDORED_MOBILENET_V2)
    for name in ("LICENSE-Apache-2.0.txt", "SOURCE.txt"):
        assert os.path.exists(os.path.join(backbones.WEIGHTS_DIR, name))
    reference = keras.applications.MobileNetV2(include_top=False, weights=None)
    reference.load_weights(backbones.VENDORED_MOBILENET_V2)
    model = build_detector("mobilenetv2-ssdlite320", NUM_CLASSES)
    backbone = model.get_layer("mobilenetv2_backbone")
    for layer_name in ("Conv1", "block_13_expand", "Conv_1_bn"):
        want = reference.get_layer(layer_name).get_weights()
        got = backbone.get_layer(layer_name).get_weights()
        assert len(want) == len(got) > 0
        for w, g in zip(want, got):
            np.testing.assert_array_equal(w, g)
    # width_multiplier != 1 has no vendored weights: random by default, error if asked.
    assert build_detector("mobilenetv2-ssdlite300", NUM_CLASSES, width_multiplier=0.5).count_params() > 0
    with pytest.raises(ValueError, match="width_multiplier=1.0"):
        build_detector("mobilenetv2-ssdlite300", NUM_CLASSES, width_multiplier=0.5, backbone_weights="vendored")


def test_imagenet_download_failure_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", offline)
    # The VGG16 and ResNet-101 files: tests/test_pretrained.py.
    with pytest.raises(RuntimeError, match="needs internet"):
        build_detector("mobilenetv2-ssdlite300", NUM_CLASSES, backbone_weights="imagenet")


def _train_and_round_trip(name, tmp_path, jit_compile=False):
    keras.utils.set_random_seed(0)
    model = build_detector(name, NUM_CLASSES, backbone_weights=None)
    model.compile(
        optimizer=keras.optimizers.SGD(1e-4), loss=ScaleBalancedLoss(), jit_compile=jit_compile
    )
    images, targets = random_images(model), random_targets(model)
    before = model.predict_raw(images, verbose=0)
    history = model.fit(images, targets, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.predict_raw(images, verbose=0)
    assert not np.allclose(before, after), "the train step changed nothing"

    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Detector)
    assert loaded.anchor_spec == model.anchor_spec and loaded.num_classes == NUM_CLASSES
    np.testing.assert_array_equal(loaded.predict_raw(images, verbose=0), after)


@pytest.mark.parametrize("name", FAST_MODELS)
def test_train_step_and_keras_round_trip(name, tmp_path):
    _train_and_round_trip(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_MODELS)
def test_train_step_and_keras_round_trip_512(name, tmp_path):
    _train_and_round_trip(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_step_under_xla(name, tmp_path):
    _train_and_round_trip(name, tmp_path, jit_compile=True)


def test_mixed_bfloat16_output_is_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_detector("mobilenetv2-ssdlite300", NUM_CLASSES, backbone_weights=None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("extra_0_dw").compute_dtype == "bfloat16"
    out = model(random_images(model))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.isfinite(keras.ops.convert_to_numpy(out)).all()


def test_detector_identity_survives_the_keras_file(tmp_path):
    model = build_detector(
        "mobilenetv2-ssdlite300", NUM_CLASSES, class_names=("a", "b", "c"), backbone_weights=None
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    for m in (model, keras.saving.load_model(path)):
        assert m.registry_name == "mobilenetv2-ssdlite300" != m.name
        assert (m.output_layout, m.targets) == ("ssd", "ssd")
        assert m.class_names == ("a", "b", "c")
    with pytest.raises(ValueError, match="2 class names"):
        build_detector("ssd300", NUM_CLASSES, class_names=("a", "b"), backbone_weights=None)


def test_builders_make_complete_detectors_and_the_registry_only_checks(monkeypatch):
    """A builder called directly labels its own layout; `build_detector` refuses a
    builder whose detector disagrees with its registration instead of relabelling it."""
    from keras_scb.models import factory
    from keras_scb.models.refinedet import refinedet_vgg16

    model = refinedet_vgg16(NUM_CLASSES, image_size=320, backbone_weights=None)
    assert (model.output_layout, model.targets) == ("refinedet", "gt")
    entry = factory.detector_entry("mobilenetv2-ssdlite300")
    monkeypatch.setitem(factory.DETECTORS, "mislabelled", factory.DetectorEntry(
        "mislabelled", entry.builder, "refinedet", "gt"))
    with pytest.raises(RuntimeError, match="the builder of 'mislabelled' returned"):
        build_detector("mislabelled", NUM_CLASSES, backbone_weights=None)


def test_loss_and_decoding_import_without_tensorflow(python_subprocess):
    # That the losses and the post-processing import no architecture is
    # tests/test_layers.py's (``import keras_scb`` itself registers the models).
    python_subprocess(
        "import sys, keras_scb.refinedet_loss, keras_scb.box_coding, keras_scb.output_layout\n"
        "import keras_scb.decoding, keras_scb.box_formats\n"
        "assert 'tensorflow' not in sys.modules",
        env={"KERAS_BACKEND": "jax"},
    )


def test_package_imports_without_tensorflow(python_subprocess):
    python_subprocess(
        "import sys, keras_scb.models; assert 'tensorflow' not in sys.modules",
        env={"KERAS_BACKEND": "jax"},
    )


JAX_PARITY = """
import numpy as np, keras
from keras_scb.losses import ScaleBalancedLoss
from keras_scb.models import Detector
data = np.load({data!r})
model = keras.saving.load_model({model!r})
assert keras.backend.backend() == "jax" and isinstance(model, Detector)
out = model.predict_raw(data["images"], verbose=0)
scale = np.abs(data["outputs"]).max()
np.testing.assert_allclose(out, data["outputs"], rtol=1e-4, atol=1e-4 * max(scale, 1.0))
model.compile(optimizer=keras.optimizers.SGD(1e-4), loss=ScaleBalancedLoss())
loss = model.fit(data["images"], data["targets"], epochs=1, verbose=0).history["loss"][0]
assert np.isfinite(loss), loss
print("ok", loss)
"""


@pytest.mark.parametrize("name", ["ssd300", "mobilenetv2-ssdlite320"])
def test_tensorflow_saved_model_runs_identically_under_jax(name, tmp_path, python_subprocess):
    assert keras.backend.backend() == "tensorflow"
    model = build_detector(name, NUM_CLASSES)
    images = random_images(model, batch=2)
    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "data.npz")
    model.save(model_path)
    np.savez(
        data_path, images=images, outputs=model.predict_raw(images, verbose=0),
        targets=random_targets(model, batch=2),
    )
    out = python_subprocess(
        JAX_PARITY.format(data=data_path, model=model_path), env={"KERAS_BACKEND": "jax"}
    )
    assert out.startswith("ok")


@pytest.mark.parametrize("name", ["ssd300", "refinedet320"])
def test_stride_two_extra_convs_pad_every_side(name):
    """ssd.pytorch (padding=1) and Caffe (pad: 1) pad stride-2 extras on all four
    sides; Keras's "same" pads only the bottom/right of an even map (10 -> 5)."""
    model = build_detector(name, 3, backbone_weights=None)
    strided = [
        layer for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.strides == (2, 2)
        and layer.name.startswith("conv")
    ]
    assert strided, "no stride-2 extra convs found"
    for layer in strided:
        assert layer.padding == "valid", layer.name
        pad = model.get_layer(f"{layer.name}_pad")
        assert pad.padding == ((1, 1), (1, 1)), layer.name

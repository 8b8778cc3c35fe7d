"""Reference SSD checkpoints (torchvision, ssd.pytorch) onto our SSD300, without torch.

The state dicts here are synthetic numpy ones, written from the references'
own layer lists (torchvision ``ssd300_vgg16`` / ``SSDFeatureExtractorVGG``,
ssd.pytorch ``ssd.py``), not from `reference_weights`' tables: a wrong name,
order, transpose or interleave fails. ``tests/test_peers_reference_weights.py``
(``make test-peers``) runs the real networks.
"""

import dataclasses
import os

import keras
import numpy as np
import pytest

from keras_scb import convert_weights
from keras_scb.anchors import AnchorSpec, get_anchor_spec, get_anchors
from keras_scb.checkpoints import (
    CheckpointError,
    init_checkpoint_options,
    init_from_checkpoint,
    load_checkpoint,
)
from keras_scb.models import build_detector
from keras_scb.models import reference_weights as rw
from keras_scb.models.layers import (
    NORMALIZATIONS,
    CaffeImageNetNormalization,
    get_normalization,
)

# conv1_1 .. conv5_3, fc6, fc7 (in, out, kernel); then the extras; then the maps' channels.
_VGG = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
        (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
_EXTRAS = [(1024, 256, 1), (256, 512, 3), (512, 128, 1), (128, 256, 3),
           (256, 128, 1), (128, 256, 3), (256, 128, 1), (128, 256, 3)]
_MAPS = [512, 1024, 512, 256, 256, 256]
_ANCHORS = [4, 6, 6, 6, 4, 4]


def _conv(state, name, cin, cout, kernel, rng):
    state[f"{name}.weight"] = rng.standard_normal((cout, cin, kernel, kernel), np.float32)
    state[f"{name}.bias"] = rng.standard_normal(cout, np.float32)


def _torchvision_state(num_classes, seed=0):
    """torchvision ``ssd300_vgg16(num_classes=num_classes + 1).state_dict()``'s layout."""
    rng = np.random.default_rng(seed)
    state = {"backbone.scale_weight": rng.uniform(10, 30, 512).astype(np.float32)}
    # vgg16().features indices of the convs; features keeps up to conv4_3's ReLU (22).
    for index, (cin, cout) in zip([0, 2, 5, 7, 10, 12, 14, 17, 19, 21], _VGG):
        _conv(state, f"backbone.features.{index}", cin, cout, 3, rng)
    # extra[0] = [maxpool4, conv5_1, relu, conv5_2, relu, conv5_3, relu, fc]
    for index, (cin, cout) in zip([1, 3, 5], _VGG[10:]):
        _conv(state, f"backbone.extra.0.{index}", cin, cout, 3, rng)
    _conv(state, "backbone.extra.0.7.1", 512, 1024, 3, rng)  # fc = [pool5, fc6, relu, fc7, relu]
    _conv(state, "backbone.extra.0.7.3", 1024, 1024, 1, rng)
    for i, (cin, cout, kernel) in enumerate(_EXTRAS):
        _conv(state, f"backbone.extra.{1 + i // 2}.{2 * (i % 2)}", cin, cout, kernel, rng)
    for i, (channels, k) in enumerate(zip(_MAPS, _ANCHORS)):
        _conv(state, f"head.classification_head.module_list.{i}", channels,
              k * (num_classes + 1), 3, rng)
        _conv(state, f"head.regression_head.module_list.{i}", channels, 4 * k, 3, rng)
    return state


def _ssd_pytorch_state(num_classes, seed=0):
    """ssd.pytorch ``build_ssd('train', 300, num_classes + 1).state_dict()``'s layout."""
    rng = np.random.default_rng(seed)
    state = {"L2Norm.weight": rng.uniform(10, 30, 512).astype(np.float32)}
    vgg = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # `vgg(base['300'], 3)`
    for index, (cin, cout) in zip(vgg, _VGG):
        _conv(state, f"vgg.{index}", cin, cout, 3, rng)
    _conv(state, "vgg.31", 512, 1024, 3, rng)  # conv6 after pool5 (30)
    _conv(state, "vgg.33", 1024, 1024, 1, rng)
    for i, (cin, cout, kernel) in enumerate(_EXTRAS):
        _conv(state, f"extras.{i}", cin, cout, kernel, rng)
    for i, (channels, k) in enumerate(zip(_MAPS, _ANCHORS)):
        _conv(state, f"loc.{i}", channels, 4 * k, 3, rng)
        _conv(state, f"conf.{i}", channels, k * (num_classes + 1), 3, rng)
    return state


def _hwio(array):
    return np.transpose(array, (2, 3, 1, 0))


@pytest.fixture(scope="module")
def torchvision_state():
    return _torchvision_state(90)


@pytest.fixture(scope="module")
def ssd300_coco():
    """Our SSD300 as torchvision's COCO model: 90 classes, its anchors and input."""
    return build_detector(
        "ssd300", 90, anchors="ssd300_torchvision", normalization="torchvision"
    )


def _check_mapped(model, state, vgg_names, l2norm, extra_names, head_names, num_classes):
    depth = 4 + num_classes + 1
    layers = rw.VGG_LAYERS
    for layer, name in zip(layers, vgg_names):
        kernel, bias = model.get_layer(layer).get_weights()
        np.testing.assert_array_equal(kernel, _hwio(state[f"{name}.weight"]), err_msg=layer)
        np.testing.assert_array_equal(bias, state[f"{name}.bias"], err_msg=layer)
    np.testing.assert_array_equal(model.get_layer("conv4_3_norm").get_weights()[0], state[l2norm])
    for layer, name in extra_names:
        np.testing.assert_array_equal(
            model.get_layer(layer).get_weights()[0], _hwio(state[f"{name}.weight"]))
    for i, (box, cls) in enumerate(head_names):
        kernel, bias = model.get_layer(f"head_{i}_pred").get_weights()
        box_w, cls_w = _hwio(state[f"{box}.weight"]), _hwio(state[f"{cls}.weight"])
        for a in range(_ANCHORS[i]):  # anchor a: [4 offsets, C + 1 logits]
            np.testing.assert_array_equal(
                kernel[..., a * depth:a * depth + 4], box_w[..., 4 * a:4 * a + 4])
            np.testing.assert_array_equal(
                kernel[..., a * depth + 4:(a + 1) * depth],
                cls_w[..., a * (num_classes + 1):(a + 1) * (num_classes + 1)])
            np.testing.assert_array_equal(
                bias[a * depth:a * depth + 4], state[f"{box}.bias"][4 * a:4 * a + 4])
            np.testing.assert_array_equal(
                bias[a * depth + 4:(a + 1) * depth],
                state[f"{cls}.bias"][a * (num_classes + 1):(a + 1) * (num_classes + 1)])


def test_torchvision_state_dict_maps_tensor_for_tensor(ssd300_coco, torchvision_state):
    state = torchvision_state
    assert len(state) == 71 and sum(v.size for v in state.values()) == 35_641_826
    assert ssd300_coco.count_params() == 35_641_826
    rw.load_reference_weights(ssd300_coco, rw.SOURCES["torchvision"], state, "synthetic")
    vgg = [f"backbone.features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)] + [
        "backbone.extra.0.1", "backbone.extra.0.3", "backbone.extra.0.5",
        "backbone.extra.0.7.1", "backbone.extra.0.7.3"]
    extras = [(f"conv{6 + i // 2}_{1 + i % 2}", f"backbone.extra.{1 + i // 2}.{2 * (i % 2)}")
              for i in range(8)]
    heads = [(f"head.regression_head.module_list.{i}",
              f"head.classification_head.module_list.{i}") for i in range(6)]
    _check_mapped(ssd300_coco, state, vgg, "backbone.scale_weight", extras, heads, 90)


def test_ssd_pytorch_state_dict_maps_tensor_for_tensor():
    model = build_detector("ssd300", 20, normalization="ssd.pytorch")
    state = _ssd_pytorch_state(20)
    rw.load_reference_weights(model, rw.SOURCES["ssd.pytorch"], state, "synthetic")
    vgg = [f"vgg.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)]
    extras = [(f"conv{6 + i // 2}_{1 + i % 2}", f"extras.{i}") for i in range(8)]
    heads = [(f"loc.{i}", f"conf.{i}") for i in range(6)]
    _check_mapped(model, state, vgg, "L2Norm.weight", extras, heads, 20)


def _renamed(state, old, new):
    return {new if k == old else k: v for k, v in state.items()}


@pytest.mark.parametrize("damage,named", [
    (lambda s: _renamed(s, "backbone.extra.2.0.weight", "backbone.extras.2.0.weight"),
     "'backbone.extra.2.0.weight' is missing"),
    (lambda s: {k: v for k, v in s.items() if k != "backbone.scale_weight"},
     "'backbone.scale_weight' is missing"),
    (lambda s: {**s, "head.regression_head.module_list.3.bias": np.zeros(25, np.float32)},
     "'head.regression_head.module_list.3.bias' has shape (25,); the layout needs (24,)"),
    (lambda s: {**s, "backbone.extra.0.7.3.weight": np.zeros((1024, 1024, 3, 3), np.float32)},
     "'backbone.extra.0.7.3.weight' has shape (1024, 1024, 3, 3); the layout needs "
     "(1024, 1024, 1, 1)"),
    (lambda s: {**s, "backbone.extra.5.0.weight": np.zeros(3, np.float32)},
     "unexpected tensor 'backbone.extra.5.0.weight'"),
])
def test_a_wrong_tensor_is_named_and_nothing_is_set(
    ssd300_coco, torchvision_state, damage, named
):
    # The first and the last layer the state dict sets stay as they were.
    layers = [ssd300_coco.get_layer(name) for name in ("block1_conv1", "head_5_pred")]
    before = [layer.get_weights() for layer in layers]
    state = {k: v + 1 for k, v in torchvision_state.items()}  # differs from what is set
    with pytest.raises(rw.ReferenceWeightsError) as error:
        rw.load_reference_weights(
            ssd300_coco, rw.SOURCES["torchvision"], damage(state),
            "FILE.pth (torchvision's SSD300 layout)")
    message = str(error.value)
    assert named in message and message.startswith("FILE.pth") and "\n" not in message
    for layer, weights in zip(layers, before):
        for old, new in zip(weights, layer.get_weights()):
            np.testing.assert_array_equal(old, new)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """An ssd.pytorch-layout SSD300 of 3 classes converted: (its state dict, the .keras)."""
    folder = tmp_path_factory.mktemp("converted")
    state = _ssd_pytorch_state(3, seed=2)
    source = folder / "ssd300_bccd.npz"
    np.savez(source, **state)
    output = folder / "ssd300_bccd.keras"
    convert_weights.convert("ssd.pytorch", str(source), str(output), ["a", "b", "c"])
    return state, output


def test_convert_writes_a_keras_file_with_the_references_input_anchors_and_labels(converted):
    state, output = converted
    model = load_checkpoint(output)
    assert model.input_normalization == NORMALIZATIONS["ssd.pytorch"]
    assert model.anchor_spec == get_anchor_spec("ssd300_coco")  # ssd.pytorch: not 21 classes
    assert model.class_names == ("a", "b", "c") and model.registry_name == "ssd300"
    np.testing.assert_array_equal(
        model.get_layer("fc7").get_weights()[0], _hwio(state["vgg.33.weight"]))


def test_convert_stops_on_a_bad_tensor_and_writes_nothing(tmp_path):
    state = _ssd_pytorch_state(20, seed=3)
    state["conf.5.bias"] = state["conf.5.bias"][:-1]
    source = tmp_path / "bad.npz"
    np.savez(source, **state)
    output = tmp_path / "out.keras"
    with pytest.raises(ValueError, match=r"bad.npz \(ssd.pytorch's SSD300 layout\): tensor "
                                         r"'conf.5.bias' has shape \(83,\)"):
        convert_weights.convert("ssd.pytorch", str(source), str(output))
    assert os.listdir(tmp_path) == ["bad.npz"]


def test_convert_needs_class_names_for_an_unknown_class_count(tmp_path):
    source = tmp_path / "ssd300.npz"
    np.savez(source, **_torchvision_state(3))
    with pytest.raises(ValueError, match="--class_names: .* has 3 classes"):
        convert_weights.convert("torchvision", str(source), str(tmp_path / "out.keras"))
    assert convert_weights.default_class_names("torchvision", 90) == rw.TORCHVISION_COCO_NAMES
    assert len(set(rw.TORCHVISION_COCO_NAMES)) == 90  # labels.txt needs unique names
    assert rw.TORCHVISION_COCO_NAMES[11] == "N/A (12)"  # COCO has no category 12
    assert convert_weights.default_class_names("ssd.pytorch", 20)[0] == "aeroplane"


def test_backbone_file_sets_the_vgg_layers_and_its_normalisation(tmp_path):
    # ssd.pytorch's vgg16_reducedfc.pth: its `vgg` ModuleList, conv1_1 .. fc7.
    state = {k.removeprefix("vgg."): v for k, v in _ssd_pytorch_state(20, seed=4).items()
             if k.startswith("vgg.")}
    path = tmp_path / "vgg16_reducedfc.npz"
    np.savez(path, **state)
    model = build_detector("ssd300", 3, backbone_weights=str(path))
    assert model.input_normalization == NORMALIZATIONS["ssd.pytorch"]
    np.testing.assert_array_equal(model.get_layer("fc6").get_weights()[0], _hwio(state["31.weight"]))
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[1], state["0.bias"])
    with pytest.raises(ValueError, match="trained with the ssd.pytorch input normalisation"):
        build_detector("ssd300", 3, backbone_weights=str(path), normalization="torchvision")
    del state["33.bias"]
    np.savez(path, **state)
    with pytest.raises(rw.ReferenceWeightsError, match="tensor '33.bias' is missing"):
        build_detector("ssd300", 3, backbone_weights=str(path))


def test_torchvision_anchors_clamp_only_width_and_height():
    """DefaultBoxGenerator: ``_wh_pairs[k].clamp(min=0, max=1)``, centres as they are."""
    ours = get_anchors("ssd300_torchvision")
    coco = get_anchor_spec("ssd300_coco")
    unclipped = get_anchors(dataclasses.replace(coco, clip=False))
    np.testing.assert_array_equal(ours[:, :2], unclipped[:, :2])
    np.testing.assert_array_equal(ours[:, 2:], np.clip(unclipped[:, 2:], 0, 1))
    # torchvision's scales 0.07, 0.15, ..., 1.05 are the COCO sizes / 300.
    assert dataclasses.replace(get_anchor_spec("ssd300_torchvision"), clip=True) == coco
    assert int(np.any(ours != get_anchors(coco), axis=1).sum()) == 114
    assert ours[:, :2].max() > 1.0
    with pytest.raises(ValueError, match="AnchorSpec.clip must be one of"):
        AnchorSpec(300, (1,), (30,), None, ((2,),), clip="cxcy")


def test_normalisations_are_the_references_and_survive_the_config():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, size=(2, 4, 4, 3)).astype("float32")
    torchvision = CaffeImageNetNormalization("torchvision")
    # torchvision: (x / 255 - mean) / (1 / 255) on RGB, image_mean of ssd300_vgg16.
    want = (rgb / 255 - np.array([0.48235, 0.45882, 0.40784])) / (1 / 255)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(torchvision(rgb)), want, atol=1e-3)
    ssd_pytorch = CaffeImageNetNormalization("ssd.pytorch")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ssd_pytorch(rgb)),
                               rgb[..., ::-1] - np.array([104, 117, 123]), atol=1e-4)
    with_std = CaffeImageNetNormalization(
        {"channel_order": "rgb", "mean": [1, 2, 3], "std": [2, 4, 8]})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(with_std(rgb)),
                               (rgb - [1, 2, 3]) / [2, 4, 8], rtol=1e-6)
    for layer in (torchvision, ssd_pytorch, with_std):
        again = CaffeImageNetNormalization.from_config(layer.get_config())
        assert again.normalization == layer.normalization
    # A config written before the normalisation was configurable: keras's VGG16.
    old = CaffeImageNetNormalization.from_config({"name": "preprocess", "trainable": True})
    assert old.normalization == NORMALIZATIONS["keras_vgg"]


def test_init_checkpoint_loads_the_matching_layers_and_a_new_head(converted):
    state, path = converted
    options = init_checkpoint_options(path, "ssd300")
    assert get_normalization(options.pop("normalization")) == NORMALIZATIONS["ssd.pytorch"]
    assert options == {}
    options = init_checkpoint_options(path, "ssd300")
    model = build_detector("ssd300", 2, anchors="ssd300_coco", **options)
    assert model.input_normalization == NORMALIZATIONS["ssd.pytorch"]
    before = model.get_layer("head_0_pred").get_weights()
    line = init_from_checkpoint(model, path)
    heads = ", ".join(f"head_{i}_pred" for i in range(6))
    assert line == (f"--init_checkpoint={path}: 24 of 30 layers loaded (3 classes there, "
                    f"2 here); newly initialised: {heads}.")
    np.testing.assert_array_equal(
        model.get_layer("conv9_2").get_weights()[0], _hwio(state["extras.7.weight"]))
    for old, new in zip(before, model.get_layer("head_0_pred").get_weights()):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(CheckpointError, match="is a 'ssd300', not the --model=ssd512"):
        init_checkpoint_options(path, "ssd512")


def test_train_checks_init_checkpoint_before_reading_data(tmp_path, monkeypatch, converted):
    from keras_scb import train
    from keras_scb.config import DataConfig, TrainConfig

    def read_data(*args, **kwargs):
        raise AssertionError("the data was read before --init_checkpoint was checked")

    monkeypatch.setattr(DataConfig, "read_split", read_data)
    run = [f"--model_dir={tmp_path / 'run'}", "--dataset=voc", "--data_dir=/nonexistent"]
    _, path = converted
    for flags, message in [
        ([f"--init_checkpoint={tmp_path / 'none.keras'}", "--model=ssd300"],
         "none.keras does not exist"),
        ([f"--init_checkpoint={path}", "--model=fssd300"],
         "is a 'ssd300', not the --model=fssd300"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            train.train(TrainConfig.from_args(run + flags))
    with pytest.raises(ValueError, match="drop --backbone_weights"):
        TrainConfig.from_args(
            run + [f"--init_checkpoint={path}", "--model=ssd300", "--backbone_weights=none"])
    assert not os.path.exists(tmp_path / "run")

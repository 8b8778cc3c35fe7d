"""FSSD and DSSD against their reference networks: anchors, parameter counts, head order.

The reference counts below are written from the reference code, not from ours:
lzx1413/PytorchSSD ``models/FSSD_vgg.py`` (the FSSD paper's code) and the
official Caffe DSSD scripts (chengyangfu/caffe, branch ``dssd``,
``examples/ssd/ssd_pascal_resnet_deconv_321.py``, ``ssd_coco_resnet_deconv_513.py``
and ``python/caffe/model_libs.py``). "Parameters" are trainable weights, as the
references count them (BatchNorm moving statistics excluded; Caffe's Scale
layer holds a BatchNorm's gamma and beta).
"""

import dataclasses

import keras
import numpy as np
import pytest

from keras_scb.anchors import anchors_per_map, get_anchor_spec, get_anchors
from keras_scb.models import build_detector

from anchor_order_testing import assert_heads_follow_anchor_order


def _trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _conv(cin, cout, kernel, bias=True):
    return cin * cout * kernel * kernel + (cout if bias else 0)


# --- FSSD, as PytorchSSD's FSSD_vgg.py --------------------------------------

_VGG_TO_FC7 = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256),
               (256, 256), (256, 512), (512, 512), (512, 512), (512, 512),
               (512, 512), (512, 512)]


def _pytorchssd_fssd_parameters(size, num_classes):
    """``sum(p.numel() for p in FSSD(num_classes, size).parameters())``, by hand."""
    n = sum(_conv(cin, cout, 3) for cin, cout in _VGG_TO_FC7)
    n += _conv(512, 1024, 3) + _conv(1024, 1024, 1)  # conv6 (dilated), conv7
    # extras [256, 512, 128, 'S', 256] on fc7: 1x1, 3x3, 1x1, 3x3 stride 2
    n += _conv(1024, 256, 1) + _conv(256, 512, 3) + _conv(512, 128, 1) + _conv(128, 256, 3)
    # ft_module: 1x1 convs to 256 (bias, no BN) of conv4_3, fc7, extras
    n += _conv(512, 256, 1) + _conv(1024, 256, 1) + _conv(256, 256, 1)
    n += 2 * 768  # fea_bn (affine)
    pyramid = [(768, 512, 3), (512, 512, 3), (512, 256, 3), (256, 256, 3)]
    pyramid += {300: [(256, 256, 3)] * 2, 512: [(256, 256, 3)] * 2 + [(256, 256, 4)]}[size]
    n += sum(_conv(cin, cout, k) for cin, cout, k in pyramid)
    mbox = {300: [6, 6, 6, 6, 4, 4], 512: [6, 6, 6, 6, 6, 4, 4]}[size]
    channels = {300: [512, 512, 256, 256, 256, 256],
                512: [512, 512, 256, 256, 256, 256, 256]}[size]
    n += sum(_conv(c, k * 4, 3) + _conv(c, k * num_classes, 3) for c, k in zip(channels, mbox))
    return n


# --- DSSD, as the official Caffe scripts ------------------------------------

def _caffe_conv_bn(cin, cout, kernel):
    """ConvBNLayer(use_bn=True): conv without bias, BatchNorm, Scale (gamma, beta)."""
    return _conv(cin, cout, kernel, bias=False) + 2 * cout


def _caffe_res_body(cin, a, b, c, kernel=1, branch1=True):
    n = _caffe_conv_bn(cin, c, kernel) if branch1 else 0
    return n + _caffe_conv_bn(cin, a, kernel) + _caffe_conv_bn(a, b, 3) + _caffe_conv_bn(b, c, 1)


def _caffe_resnet101():
    n = _caffe_conv_bn(3, 64, 7)
    cin = 64
    for a, c, blocks in [(64, 256, 3), (128, 512, 4), (256, 1024, 23), (512, 2048, 3)]:
        for i in range(blocks):
            n += _caffe_res_body(cin, a, a, c, branch1=i == 0)
            cin = c
    return n


def _caffe_dssd_parameters(size, num_classes):
    """Learnable blobs of the official train prototxt, BatchNorm statistics excluded."""
    extras = {321: [2, 2, 3, 3], 513: [2] * 5}[size]  # ResBody kernels of res6..
    deconvs = {321: [3, 3, 2, 2, 2], 513: [2] * 6}[size]  # AddDeconvLayers kernels
    heads = {321: [5, 5, 3, 3, 3, 3], 513: [5, 5, 3, 3, 3, 3, 3]}[size]
    n = _caffe_resnet101()
    cin = 2048
    for kernel in extras:
        n += _caffe_res_body(cin, 256, 256, 1024, kernel)
        cin = 1024
    # CombineFeature inputs from coarse to fine: res8.. (1024), res5c, res3b3.
    forward = [1024] * (len(extras) - 1) + [2048, 512]
    deep = 1024
    for kernel, shallow in zip(deconvs, forward):
        n += _conv(deep, 512, kernel)  # Deconvolution with bias
        n += _caffe_conv_bn(shallow, 512, 3) + 2 * _caffe_conv_bn(512, 512, 3)
        deep = 512
    for kernel, c in zip(heads, [512] * len(deconvs) + [1024]):
        n += _caffe_res_body(c, 256, 256, 1024)  # CreateMultiBoxHead's ResBody
        n += _conv(1024, 8 * 4, kernel) + _conv(1024, 8 * num_classes, kernel)
    return n


def _keras_resnet_conv_biases(model):
    """keras's ResNet-101 convs have biases, Caffe ResNet-101's do not."""
    backbone = model.get_layer("resnet101_backbone")
    return sum(
        int(np.prod(layer.bias.shape)) for layer in backbone.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias
    )


def _check(model, name, num_classes, anchors, parameters):
    assert model.anchor_spec == get_anchor_spec(name)
    assert model.output_shape == (None, anchors, 4 + num_classes)
    assert len(model.anchors) == anchors
    assert _trainable(model) == parameters


# 21 classes: PASCAL VOC + background; 81: COCO + background.
@pytest.mark.parametrize("num_classes", [21, 81])
def test_fssd300_is_pytorchssd_fssd(num_classes):
    reference = _pytorchssd_fssd_parameters(300, num_classes)
    assert reference == {21: 34_132_960, 81: 40_217_440}[num_classes]
    model = build_detector("fssd300", num_classes - 1)
    _check(model, "fssd300", num_classes, 11_620, reference)
    assert_heads_follow_anchor_order(model)


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [21, 81])
def test_fssd512_is_pytorchssd_fssd(num_classes):
    reference = _pytorchssd_fssd_parameters(512, num_classes)
    assert reference == {21: 35_527_542, 81: 42_441_822}[num_classes]
    model = build_detector("fssd512", num_classes - 1)
    _check(model, "fssd512", num_classes, 32_756, reference)
    assert_heads_follow_anchor_order(model)


@pytest.mark.slow
@pytest.mark.parametrize("size,anchors", [(321, 17_080), (513, 43_688)])
@pytest.mark.parametrize("num_classes", [21, 81])
def test_dssd_is_the_official_caffe_dssd(size, anchors, num_classes):
    """Ours = Caffe's count + keras ResNet-101's 52,672 conv biases (Caffe's have none)."""
    caffe = _caffe_dssd_parameters(size, num_classes)
    assert caffe == {(321, 21): 172_380_912, (321, 81): 214_654_512,
                     (513, 21): 175_286_712, (513, 81): 221_984_472}[size, num_classes]
    model = build_detector(f"dssd{size}", num_classes - 1)
    biases = _keras_resnet_conv_biases(model)
    assert biases == 52_672
    _check(model, f"dssd{size}", num_classes, anchors, caffe + biases)
    if num_classes == 21:
        assert_heads_follow_anchor_order(model)


def test_fssd_anchors_are_pytorchssd_priors():
    """6 anchors per location on the first maps, 4 on the last two; SSD's sizes."""
    for name, per_location in [("fssd300", (6, 6, 6, 6, 4, 4)),
                               ("fssd512", (6, 6, 6, 6, 6, 4, 4))]:
        assert get_anchor_spec(name).anchors_per_location() == per_location
    assert get_anchor_spec("fssd300").num_anchors() == 11_620
    assert get_anchor_spec("fssd512").num_anchors() == 32_756
    # The 10x10 map's first location: 111 px, sqrt(111 * 162), then 2, 1/2, 3, 1/3.
    first = get_anchors("fssd300")[38 * 38 * 6 + 19 * 19 * 6:][:6]
    s = 111 / 300
    wh = [(s, s), (np.sqrt(s * 162 / 300),) * 2, (s * 2 ** 0.5, s / 2 ** 0.5),
          (s / 2 ** 0.5, s * 2 ** 0.5), (s * 3 ** 0.5, s / 3 ** 0.5), (s / 3 ** 0.5, s * 3 ** 0.5)]
    np.testing.assert_allclose(first[:, :2], 16 / 300, atol=1e-7)
    np.testing.assert_allclose(first[:, 2:], np.minimum(wh, 1.0), atol=1e-6)


def test_dssd_anchors_are_the_caffe_priorbox_ones():
    """Sizes truncated to int as Caffe's PriorBox reads them, centres at ``start + i * step``."""
    spec = get_anchor_spec("dssd321")
    assert spec.feature_map_sizes == (40, 20, 10, 5, 3, 1)
    assert spec.num_anchors() == 17_080
    assert get_anchor_spec("dssd513").feature_map_sizes == (64, 32, 16, 8, 4, 2, 1)
    assert get_anchor_spec("dssd513").num_anchors() == 43_688
    anchors = get_anchors(spec)
    starts = np.cumsum([0] + anchors_per_map(spec)[:-1])
    # script: min_dim * [10, 20, 38, 56, 74, 92] % (max: next one, 110 % last)
    for k, (start, offset, step, lo, hi) in enumerate(zip(
            starts, [2.5, 2.5, 10.5, 26.5, 90.5, 160.5], [8, 16, 32, 64, 64, 321],
            [32.1, 64.2, 121.98, 179.76, 237.54, 295.32],
            [64.2, 121.98, 179.76, 237.54, 295.32, 353.1])):
        first = anchors[start:start + 8]
        lo, hi = int(lo), int(hi)
        np.testing.assert_allclose(first[:, :2], offset / 321, atol=1e-7)
        r = np.sqrt([1.6, 2.0, 3.0])
        wh = [(lo, lo), (np.sqrt(lo * hi),) * 2]
        for root in r:
            wh += [(lo * root, lo / root), (lo / root, lo * root)]
        np.testing.assert_allclose(first[:, 2:], np.array(wh) / 321, rtol=1e-6)
        if spec.feature_map_sizes[k] > 1:  # next location: one step to the right
            np.testing.assert_allclose(anchors[start + 8, 0], (offset + step) / 321, atol=1e-7)
    assert anchors.max() > 1.0  # not clipped, like the Caffe configs


@pytest.mark.parametrize("name,changed", [("ssd300", 134), ("refinedet320", 50)])
def test_clipping_changes_the_anchors_that_reach_past_the_image(name, changed):
    spec = get_anchor_spec(name)
    clipped = get_anchors(dataclasses.replace(spec, clip=True))
    unclipped = get_anchors(dataclasses.replace(spec, clip=False))
    assert int(np.any(clipped != unclipped, axis=1).sum()) == changed


def test_clip_follows_each_preset_reference():
    """ssd.pytorch and PytorchSSD clip; the Caffe RefineDet and DSSD configs do not."""
    clipped = {name: get_anchor_spec(name).clip for name in (
        "ssd300", "ssd300_coco", "ssd512", "ssd512_coco", "fssd300", "fssd300_coco",
        "fssd512", "fssd512_coco", "refinedet320", "refinedet512", "dssd321", "dssd513")}
    assert clipped == {name: not name.startswith(("refinedet", "dssd")) for name in clipped}


def test_fssd_fusion_resize_aligns_corners():
    """PytorchSSD resizes with ``align_corners=True``: TF1's resize_bilinear(align_corners)."""
    import tensorflow as tf

    from keras_scb.models.layers import AlignCornersResize

    rng = np.random.default_rng(0)
    for source, target in [(19, 38), (9, 38), (15, 64)]:
        x = rng.normal(size=(2, source, source, 3)).astype(np.float32)
        got = keras.ops.convert_to_numpy(AlignCornersResize(target)(x))
        want = tf.compat.v1.image.resize_bilinear(x, (target, target), align_corners=True)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
        # keras's Resizing (half-pixel centres) is a different resize.
        assert not np.allclose(got, keras.layers.Resizing(target, target)(x), atol=1e-3)

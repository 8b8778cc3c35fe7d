"""DSSD (Fu et al. 2017, "DSSD: Deconvolutional Single Shot Detector") at 321 and 513.

Encoder: keras's ResNet-101 (Caffe-style input: BGR minus the ImageNet mean, as
its ImageNet weights expect), whose stride-8, 16 and 32 stage outputs (conv3,
conv4, conv5) are followed by SSD extra layers (1x1 conv to 256, 3x3 stride-2
conv to 512) down to 3x3 and a last valid 3x3 conv to 1x1.

Decoder: from the 1x1 map up, one deconvolution module per finer encoder map
(`deconvolution_module`: the upsampled decoder map and the encoder map, each
through convs and BatchNorm, joined by an element-wise product). Every decoder
map goes through the residual prediction module (`prediction_module`) and then
a plain 3x3 multibox head.

Deviation from the paper: DSSD dilates conv5 so that it stays at stride 16 and
predicts from conv3 and conv5; keras's ResNet-101 has conv5 at stride 32, so the
stride-16 map comes from conv4 instead (same number of maps: 6 at 321, 7 at 513;
see the ``dssd321``/``dssd513`` anchor presets).
"""

import functools

import keras

from keras_scb.models import backbones
from keras_scb.models.detector import Detector
from keras_scb.models.factory import register_detector
from keras_scb.models.heads import ssd_head
from keras_scb.models.layers import CaffeImageNetNormalization

_RESNET101_STAGES = ("conv3_block4_out", "conv4_block23_out", "conv5_block3_out")
DECODER_DEPTH = 512  # the paper's deconvolution-module width
_PREDICTION_DEPTHS = (256, 1024)  # bottleneck and output widths of Fig. 2(c)


def _conv_bn(x, filters, kernel, name, strides=1, padding="same", relu=True):
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding=padding, use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def extra_layers(x, name="extra"):
    """SSD extra layers after the backbone, down to a 1x1 map.

    Stride-2 blocks (1x1 conv to 256, 3x3 conv to 512) while the map is larger
    than 3x3, then a 1x1 conv to 128 and a valid 3x3 conv to 256.

    Args:
        x: ``(B, H, H, C)`` Keras tensor, ``H >= 3``.

    Returns:
        List of ``(B, H_i, H_i, C_i)`` tensors, the last one 1x1.
    """
    maps = []
    while x.shape[1] > 3:
        block = f"{name}_{len(maps)}"
        x = _conv_bn(x, 256, 1, f"{block}_reduce")
        x = _conv_bn(x, 512, 3, f"{block}_down", strides=2)
        maps.append(x)
    block = f"{name}_{len(maps)}"
    x = _conv_bn(x, 128, 1, f"{block}_reduce")
    maps.append(_conv_bn(x, 256, 3, f"{block}_down", padding="valid"))
    return maps


def _upsample(x, size, filters, name):
    """Stride-2 transposed conv of ``(B, h, w, C)`` to exactly ``size = (H, W)``.

    A kernel of 2 gives ``2h`` rows and a kernel of 3 gives ``2h + 1``; a surplus
    row/column is cropped at the bottom/right, the side where stride-2 "same"
    convolutions of an odd map drop nothing, so coarse cell ``i`` stays over
    fine cell ``2i``.
    """
    coarse = tuple(x.shape[1:3])
    for h, target in zip(coarse, size):
        if not h < target <= 2 * h + 1:
            raise ValueError(
                f"Cannot upsample a {coarse} map to {tuple(size)} with one "
                f"stride-2 deconvolution."
            )
    kernel = tuple(2 if 2 * h >= t else 3 for h, t in zip(coarse, size))
    x = keras.layers.Conv2DTranspose(
        filters, kernel, strides=2, padding="valid", name=f"{name}_deconv"
    )(x)
    surplus = [x.shape[i + 1] - size[i] for i in range(2)]
    if any(surplus):
        x = keras.layers.Cropping2D(
            ((0, surplus[0]), (0, surplus[1])), name=f"{name}_crop"
        )(x)
    return x


def deconvolution_module(deep, shallow, filters=DECODER_DEPTH, name="deconv"):
    """DSSD's deconvolution module (paper Fig. 3).

    Deconvolution path: stride-2 deconv, 3x3 conv, BatchNorm. Encoder path: 3x3
    conv, BatchNorm, ReLU, 3x3 conv, BatchNorm. The two are multiplied element
    by element (the paper found the product better than a sum), then ReLU.

    Args:
        deep: ``(B, h, w, C_d)`` coarser decoder map.
        shallow: ``(B, H, W, C_s)`` encoder map, ``h < H <= 2h + 1``.

    Returns:
        ``(B, H, W, filters)`` Keras tensor.
    """
    up = _upsample(deep, shallow.shape[1:3], filters, f"{name}_up")
    up = _conv_bn(up, filters, 3, f"{name}_up", relu=False)
    lateral = _conv_bn(shallow, filters, 3, f"{name}_lateral_a")
    lateral = _conv_bn(lateral, filters, 3, f"{name}_lateral_b", relu=False)
    x = keras.layers.Multiply(name=f"{name}_product")([up, lateral])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def prediction_module(x, name="predict"):
    """DSSD's prediction module (paper Fig. 2(c)): a residual block before a head.

    Three 1x1 convs (256, 256, 1024) plus a 1x1 projection shortcut to 1024,
    summed, then ReLU.

    Args:
        x: ``(B, H, W, C)`` Keras tensor.

    Returns:
        ``(B, H, W, 1024)`` Keras tensor.
    """
    bottleneck, depth = _PREDICTION_DEPTHS
    shortcut = _conv_bn(x, depth, 1, f"{name}_shortcut", relu=False)
    y = _conv_bn(x, bottleneck, 1, f"{name}_a")
    y = _conv_bn(y, bottleneck, 1, f"{name}_b")
    y = _conv_bn(y, depth, 1, f"{name}_c", relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def resnet101_backbone(image_size, weights=None):
    """keras's ResNet-101 cut at its stride-8, 16 and 32 stage outputs.

    Args:
        weights: ``None``, ``"imagenet"`` or a path to ``include_top=False``
            ResNet-101 weights; see `backbones.resnet101`.

    Returns:
        Functional model ``(B, S, S, 3)`` Caffe-normalised BGR -> ``[conv3 (512
        channels), conv4 (1024), conv5 (2048)]``.
    """
    base = backbones.resnet101(image_size, weights)
    return keras.Model(
        base.inputs,
        [base.get_layer(stage).output for stage in _RESNET101_STAGES],
        name="resnet101_backbone",
    )


def dssd(num_classes, image_size, anchors=None, backbone_weights=None):
    """DSSD with a ResNet-101 encoder; see the module docstring.

    Args:
        num_classes: foreground classes ``C``.
        image_size: 321 or 513 (any size whose maps fit ``anchors``).
        anchors: preset name or `AnchorSpec`; default ``f"dssd{image_size}"``.
        backbone_weights: ``None`` (default), ``"imagenet"`` or a weights path;
            see `resnet101_backbone`.

    Returns:
        `Detector` ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``.
    """
    anchors = f"dssd{image_size}" if anchors is None else anchors
    backbone = resnet101_backbone(image_size, backbone_weights)

    images = keras.Input((image_size, image_size, 3), name="images")
    x = CaffeImageNetNormalization(name="preprocess")(images)
    encoder = list(backbone(x))
    encoder += extra_layers(encoder[-1])
    x = encoder[-1]
    decoder = [x]
    for i in reversed(range(len(encoder) - 1)):
        x = deconvolution_module(x, encoder[i], name=f"deconv_{i}")
        decoder.insert(0, x)
    features = [prediction_module(f, f"predict_{i}") for i, f in enumerate(decoder)]
    outputs = ssd_head(features, anchors, num_classes)
    return Detector(
        images,
        outputs,
        anchor_spec=anchors,
        num_classes=num_classes,
        name=f"dssd{image_size}",
    )


for _size in (321, 513):
    register_detector(f"dssd{_size}")(functools.partial(dssd, image_size=_size))

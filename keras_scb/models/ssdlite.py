"""MobileNetV2-SSDLite (Sandler et al. 2018), at 300 and 320 pixels.

Prediction maps: the stride-16 expansion of MobileNetV2 block 13 (576 channels at
width multiplier 1), its stride-32 output (1280), then four extra blocks (1x1 conv to half
the depth, depthwise 3x3 stride 2, 1x1 conv; depths 512, 256, 256, 128 times
the width multiplier) down to 1x1, with depthwise-separable heads, as in the TF Object
Detection API's ``ssdlite_mobilenet_v2``.
"""

from typing import Any

import keras

from keras_scb.anchors import AnchorSpec
from keras_scb.models import backbones
from keras_scb.models.detector import Detector
from keras_scb.models.factory import register_detector
from keras_scb.models.heads import ssd_head

_EXTRA_DEPTHS = (512, 256, 256, 128)
_MIN_DEPTH = 16


def _conv_bn_relu6(x, filters, bn_momentum, name):
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)


def _extra_block(x, depth, bn_momentum, name):
    """``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), depth)``."""
    x = _conv_bn_relu6(x, depth // 2, bn_momentum, f"{name}_reduce")
    x = keras.layers.DepthwiseConv2D(
        3, strides=2, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    return _conv_bn_relu6(x, depth, bn_momentum, f"{name}_expand")


def mobilenet_v2_ssdlite(
    num_classes: int,
    image_size: int,
    width_multiplier: float = 1.0,
    anchors: str | AnchorSpec | None = None,
    backbone_weights: str | None = "default",
    bn_momentum: float = 0.99,
) -> Detector:
    """MobileNetV2-SSDLite.

    Args:
        num_classes: foreground classes ``C``.
        image_size: 300 or 320 (any size whose maps fit ``anchors``).
        width_multiplier: MobileNetV2 width multiplier (Keras's ``alpha``); it
            also scales the extra layers.
        anchors: preset name or `AnchorSpec`; default ``f"ssdlite{image_size}"``.
        backbone_weights: ``"default"`` (the vendored ImageNet weights for width
            multiplier 1.0, random otherwise), or see `keras_scb.models.backbones`.
        bn_momentum: momentum of every BatchNorm (backbone, extras and heads);
            keras's 0.999 adapts too slowly for short detection trainings.

    Returns:
        `Detector` ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``.
    """
    if backbone_weights == "default":
        backbone_weights = "vendored" if width_multiplier == 1.0 else None
    anchors = f"ssdlite{image_size}" if anchors is None else anchors
    base = backbones.mobilenet_v2(
        image_size, width_multiplier, backbone_weights, bn_momentum
    )
    backbone = keras.Model(
        base.inputs,
        [base.get_layer("block_13_expand_relu").output, base.outputs[0]],
        name="mobilenetv2_backbone",
    )

    images = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(images)
    features = list(backbone(x))
    x = features[-1]
    for i, depth in enumerate(_EXTRA_DEPTHS):
        depth = max(int(depth * width_multiplier), _MIN_DEPTH)
        x = _extra_block(x, depth, bn_momentum, f"extra_{i}")
        features.append(x)
    outputs = ssd_head(
        features, anchors, num_classes, separable=True, bn_momentum=bn_momentum
    )
    return Detector(
        images,
        outputs,
        anchor_spec=anchors,
        num_classes=num_classes,
        name=f"mobilenetv2_ssdlite{image_size}",
    )


@register_detector("mobilenetv2-ssdlite300")
def mobilenet_v2_ssdlite300(num_classes: int, **kwargs: Any) -> Detector:
    """MobileNetV2-SSDLite at 300 pixels; ``kwargs`` as `mobilenet_v2_ssdlite`."""
    return mobilenet_v2_ssdlite(num_classes, 300, **kwargs)


@register_detector("mobilenetv2-ssdlite320")
def mobilenet_v2_ssdlite320(num_classes: int, **kwargs: Any) -> Detector:
    """MobileNetV2-SSDLite at 320 pixels; ``kwargs`` as `mobilenet_v2_ssdlite`."""
    return mobilenet_v2_ssdlite(num_classes, 320, **kwargs)

"""FSSD300 / FSSD512 (Li and Zhou 2017, "Feature Fusion Single Shot Detector").

The SSD VGG16 trunk up to fc7 plus one SSD extra block (10x10 at 300, the
paper's conv7_2). Fusion module: those three maps are projected to 256 channels
by 1x1 convs, resized bilinearly to the conv4_3 size, concatenated and batch
normalised. A new pyramid of strided 3x3 convs (conv + BatchNorm + ReLU) on the
fused map feeds the SSD heads, with the same maps as SSD (presets
``ssd300``/``ssd512``).
"""

import keras

from keras_scb.models.factory import register_detector
from keras_scb.models.ssd import extra_block, padded_conv, vgg16_detector, vgg16_trunk

_FUSED_CHANNELS = 256
_FUSION_SOURCE_EXTRA = (256, 512, 2, "same", 3)
# Pyramid convs as (filters, stride, padding, kernel); see `ssd.padded_conv`.
_PYRAMIDS = {
    300: (
        (512, 1, "same", 3),
        (512, 2, "same", 3),
        (256, 2, "same", 3),
        (256, 2, "same", 3),
        (256, 1, "valid", 3),
        (256, 1, "valid", 3),
    ),
    512: (
        (512, 1, "same", 3),
        (512, 2, "same", 3),
        (256, 2, "same", 3),
        (256, 2, "same", 3),
        (256, 2, "same", 3),
        (256, 2, "same", 3),
        (256, 1, "pad1", 4),
    ),
}


def fusion_module(sources, size, bn_momentum):
    """Projects, resizes and concatenates maps.

    Args:
        sources: list of ``(B, H_i, W_i, C_i)`` Keras tensors.
        size: side of the fused map.

    Returns:
        ``(B, size, size, 256 * len(sources))`` batch-normalised.
    """
    projected = []
    for i, x in enumerate(sources):
        x = keras.layers.Conv2D(
            _FUSED_CHANNELS, 1, activation="relu", name=f"fuse_proj_{i}"
        )(x)
        if tuple(x.shape[1:3]) != (size, size):
            x = keras.layers.Resizing(
                size, size, interpolation="bilinear", name=f"fuse_resize_{i}"
            )(x)
        projected.append(x)
    x = keras.layers.Concatenate(name="fuse_concat")(projected)
    return keras.layers.BatchNormalization(momentum=bn_momentum, name="fuse_bn")(x)


def fssd_vgg16(
    num_classes, image_size, anchors=None, backbone_weights=None, bn_momentum=0.99
):
    """FSSD300 or FSSD512.

    Args:
        num_classes: foreground classes ``C``.
        image_size: 300 or 512.
        anchors: preset name or `AnchorSpec`; default ``f"ssd{image_size}"``.
        backbone_weights: ``None``, ``"imagenet"`` or a with-top VGG16 weights
            file; see `ssd.load_vgg16_weights`.
        bn_momentum: momentum of the fusion and pyramid BatchNorms.

    Returns:
        `Detector` ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``.
    """
    pyramid = _PYRAMIDS[image_size]
    anchors = f"ssd{image_size}" if anchors is None else anchors
    images = keras.Input((image_size, image_size, 3), name="images")
    conv4_3, fc7 = vgg16_trunk(images)
    conv6_2 = extra_block(fc7, *_FUSION_SOURCE_EXTRA, name="conv6")
    x = fusion_module([conv4_3, fc7, conv6_2], conv4_3.shape[1], bn_momentum)
    features = []
    for i, (filters, stride, padding, kernel) in enumerate(pyramid):
        x = padded_conv(
            x, filters, stride, padding, kernel, f"pyramid_{i}", use_bias=False
        )
        x = keras.layers.BatchNormalization(
            momentum=bn_momentum, name=f"pyramid_{i}_bn"
        )(x)
        x = keras.layers.ReLU(name=f"pyramid_{i}_relu")(x)
        features.append(x)
    return vgg16_detector(
        images, features, anchors, num_classes, f"fssd{image_size}", backbone_weights
    )


@register_detector("fssd300")
def fssd300(num_classes, **kwargs):
    """FSSD300-VGG16; ``kwargs`` as `fssd_vgg16`."""
    return fssd_vgg16(num_classes, 300, **kwargs)


@register_detector("fssd512")
def fssd512(num_classes, **kwargs):
    """FSSD512-VGG16; ``kwargs`` as `fssd_vgg16`."""
    return fssd_vgg16(num_classes, 512, **kwargs)

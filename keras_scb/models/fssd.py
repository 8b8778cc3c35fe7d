"""FSSD300 / FSSD512 (Li and Zhou 2017, "Feature Fusion Single Shot Detector").

Layer by layer the network of the paper's code, lzx1413/PytorchSSD
``models/FSSD_vgg.py``:

- the SSD VGG16 trunk up to fc7 (no L2Norm on conv4_3);
- extra layers on fc7: 1x1 to 256, valid 3x3 to 512, 1x1 to 128, 3x3 stride 2
  (1-pixel padding) to 256 (19 -> 17 -> 9 at 300, 32 -> 30 -> 15 at 512);
- fusion: conv4_3, fc7 and that map each through a 1x1 conv to 256 with bias
  and ReLU, the last two resized bilinearly with aligned corners to the conv4_3
  size, concatenated (768 channels) and batch normalised;
- pyramid: 3x3 convs with bias and ReLU (no BatchNorm), the first at stride 1,
  then stride 2 with 1-pixel padding, the last ones valid (300) or a 4x4 conv
  with 1-pixel padding (512);
- a 3x3 multibox head per pyramid map, with the ``fssd300``/``fssd512`` anchors
  (6 per location on the first maps, 4 on the last two).
"""

from typing import Any, Sequence

import keras

from keras_scb.anchors import AnchorSpec
from keras_scb.models.detector import Detector
from keras_scb.models.factory import register_detector
from keras_scb.models.layers import AlignCornersResize, InputNormalization
from keras_scb.models.vgg import (
    extra_block,
    padded_conv,
    resolve_backbone,
    vgg16_detector,
    vgg16_trunk,
)

_FUSED_CHANNELS = 256
# Extra layers before the fusion as `vgg.extra_block` arguments (1x1 filters,
# 3x3 filters, stride, padding, kernel); PytorchSSD's `extras` config
# [256, 512, 128, 'S', 256].
_FUSION_SOURCE_EXTRAS = ((256, 512, 1, "valid", 3), (128, 256, 2, "pad1", 3))
# Pyramid convs as (filters, stride, padding, kernel); see `vgg.padded_conv`.
# "pad1" and not "same" at stride 2: "same" pads only the bottom/right of an
# even map, PyTorch's padding=1 pads both sides.
_PYRAMIDS = {
    300: (
        (512, 1, "same", 3),
        (512, 2, "pad1", 3),
        (256, 2, "pad1", 3),
        (256, 2, "pad1", 3),
        (256, 1, "valid", 3),
        (256, 1, "valid", 3),
    ),
    512: (
        (512, 1, "same", 3),
        (512, 2, "pad1", 3),
        (256, 2, "pad1", 3),
        (256, 2, "pad1", 3),
        (256, 2, "pad1", 3),
        (256, 2, "pad1", 3),
        (256, 1, "pad1", 4),
    ),
}


def fusion_module(
    sources: Sequence[keras.KerasTensor],
    size: int,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
) -> keras.KerasTensor:
    """Projects, resizes and concatenates maps (FSSD's feature transform + fea_bn).

    Args:
        sources: list of ``(B, H_i, W_i, C_i)`` Keras tensors.
        size: side of the fused map.
        bn_momentum, bn_epsilon: of the BatchNorm on the concatenation; the
            defaults are PyTorch's (momentum 0.1 in its convention).

    Returns:
        ``(B, size, size, 256 * len(sources))`` batch-normalised.
    """
    projected = []
    for i, x in enumerate(sources):
        x = keras.layers.Conv2D(
            _FUSED_CHANNELS, 1, activation="relu", name=f"fuse_proj_{i}"
        )(x)
        if tuple(x.shape[1:3]) != (size, size):
            x = AlignCornersResize(size, name=f"fuse_resize_{i}")(x)
        projected.append(x)
    x = keras.layers.Concatenate(name="fuse_concat")(projected)
    return keras.layers.BatchNormalization(
        momentum=bn_momentum, epsilon=bn_epsilon, name="fuse_bn"
    )(x)


def fssd_vgg16(
    num_classes: int,
    image_size: int,
    anchors: str | AnchorSpec | None = None,
    backbone_weights: str | None = None,
    bn_momentum: float = 0.9,
    normalization: str | InputNormalization | None = None,
) -> Detector:
    """FSSD300 or FSSD512.

    Args:
        num_classes: foreground classes ``C``.
        image_size: 300 or 512.
        anchors: preset name or `AnchorSpec`; default ``f"fssd{image_size}"``
            (pass ``"fssd300_coco"`` / ``"fssd512_coco"`` for the COCO scales).
        backbone_weights: ``None``, ``"imagenet"``, a with-top VGG16 weights
            file or a reference ``.pth``; see `vgg.load_vgg16_weights`.
        bn_momentum: momentum of the fusion BatchNorm (Keras convention).
        normalization: the input normalisation; see `ssd.ssd_vgg16`.

    Returns:
        `Detector` ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``.
    """
    pyramid = _PYRAMIDS[image_size]
    anchors = f"fssd{image_size}" if anchors is None else anchors
    normalization, backbone_weights = resolve_backbone(backbone_weights, normalization)
    images = keras.Input((image_size, image_size, 3), name="images")
    conv4_3, fc7 = vgg16_trunk(images, normalization)
    x = fc7
    for i, block in enumerate(_FUSION_SOURCE_EXTRAS, start=6):
        x = extra_block(x, *block, name=f"conv{i}")
    x = fusion_module([conv4_3, fc7, x], conv4_3.shape[1], bn_momentum)
    features = []
    for i, (filters, stride, padding, kernel) in enumerate(pyramid):
        x = padded_conv(
            x, filters, stride, padding, kernel, f"pyramid_{i}", activation="relu"
        )
        features.append(x)
    return vgg16_detector(
        images, features, anchors, num_classes, f"fssd{image_size}", backbone_weights
    )


@register_detector("fssd300")
def fssd300(num_classes: int, **kwargs: Any) -> Detector:
    """FSSD300-VGG16; ``kwargs`` as `fssd_vgg16`."""
    return fssd_vgg16(num_classes, 300, **kwargs)


@register_detector("fssd512")
def fssd512(num_classes: int, **kwargs: Any) -> Detector:
    """FSSD512-VGG16; ``kwargs`` as `fssd_vgg16`."""
    return fssd_vgg16(num_classes, 512, **kwargs)

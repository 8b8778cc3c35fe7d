"""SSD300 / SSD512 (Liu et al. 2016) on the VGG16 trunk in its SSD form.

The trunk is `vgg.vgg16_trunk` (SSD's VGG16 up to fc7); conv4_3 is
L2-normalised with a learnable scale. Extra blocks (1x1 conv then 3x3 conv)
continue the pyramid down to 1x1. Layer for layer torchvision's
``ssd300_vgg16`` and ssd.pytorch's SSD300, whose trained weights
`reference_weights` converts.
"""

from typing import Any

import keras

from keras_scb.anchors import AnchorSpec
from keras_scb.models.detector import Detector
from keras_scb.models.factory import register_detector
from keras_scb.models.layers import InputNormalization, L2Normalization
from keras_scb.models.vgg import extra_block, resolve_backbone, vgg16_detector, vgg16_trunk

# Extra blocks as (1x1 filters, 3x3 filters, stride, padding, kernel). Stride-2
# blocks pad one pixel on every side ("pad1"), as ssd.pytorch's padding=1 and
# Caffe's pad: 1 do (19 -> 10, 10 -> 5 at 300): Keras's "same" would pad only the
# bottom/right of an even map, shifting it by one pixel. "valid" 3x3 takes 2
# off, and SSD512's last block is the authors' 4x4 conv with 1-pixel padding (2 -> 1).
_SSD300_EXTRAS = (
    (256, 512, 2, "pad1", 3),
    (128, 256, 2, "pad1", 3),
    (128, 256, 1, "valid", 3),
    (128, 256, 1, "valid", 3),
)
_SSD512_EXTRAS = (
    (256, 512, 2, "pad1", 3),
    (128, 256, 2, "pad1", 3),
    (128, 256, 2, "pad1", 3),
    (128, 256, 2, "pad1", 3),
    (128, 256, 1, "pad1", 4),
)


def ssd_vgg16(
    num_classes: int,
    image_size: int,
    anchors: str | AnchorSpec | None = None,
    backbone_weights: str | None = None,
    normalization: str | InputNormalization | None = None,
) -> Detector:
    """SSD300 or SSD512.

    Args:
        num_classes: foreground classes ``C``.
        image_size: 300 or 512.
        anchors: preset name or `AnchorSpec`; default ``f"ssd{image_size}"``
            (pass ``"ssd300_coco"`` / ``"ssd512_coco"`` for the COCO scales,
            ``"ssd300_torchvision"`` for torchvision's).
        backbone_weights: ``None``, ``"imagenet"``, a with-top VGG16 weights
            file or a reference ``.pth``; see `vgg.load_vgg16_weights`.
        normalization: the input normalisation (`layers.NORMALIZATIONS` name
            or `InputNormalization`); default: the backbone weights' own
            (`vgg.resolve_backbone`).

    Returns:
        `Detector` ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``.
    """
    extras = {300: _SSD300_EXTRAS, 512: _SSD512_EXTRAS}[image_size]
    anchors = f"ssd{image_size}" if anchors is None else anchors
    normalization, backbone_weights = resolve_backbone(backbone_weights, normalization)
    images = keras.Input((image_size, image_size, 3), name="images")
    conv4_3, fc7 = vgg16_trunk(images, normalization)
    features = [L2Normalization(20.0, name="conv4_3_norm")(conv4_3), fc7]
    x = fc7
    # Caffe's names: conv6_1, conv6_2 (10x10 at 300), conv7_1, ...
    for i, block in enumerate(extras, start=6):
        x = extra_block(x, *block, name=f"conv{i}")
        features.append(x)
    return vgg16_detector(
        images, features, anchors, num_classes, f"ssd{image_size}", backbone_weights
    )


@register_detector("ssd300")
def ssd300(num_classes: int, **kwargs: Any) -> Detector:
    """SSD300-VGG16; ``kwargs`` as `ssd_vgg16`."""
    return ssd_vgg16(num_classes, 300, **kwargs)


@register_detector("ssd512")
def ssd512(num_classes: int, **kwargs: Any) -> Detector:
    """SSD512-VGG16; ``kwargs`` as `ssd_vgg16`."""
    return ssd_vgg16(num_classes, 512, **kwargs)

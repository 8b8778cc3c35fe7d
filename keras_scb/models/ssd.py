"""SSD300 / SSD512 (Liu et al. 2016) on the VGG16 trunk in its SSD form.

SSD changes to VGG16: pool3 rounds up (ceil mode, so conv4_3 is 38x38 at 300),
pool5 is 3x3 stride 1, fc6/fc7 become a 3x3 conv with dilation 6 and a 1x1
conv (1024 channels each), conv4_3 is L2-normalised with a learnable scale.
Extra blocks (1x1 conv then 3x3 conv) continue the pyramid down to 1x1.
"""

from typing import Any, Sequence

import keras

from keras_scb.anchors import AnchorSpec
from keras_scb.models import backbones
from keras_scb.models.detector import Detector
from keras_scb.models.factory import register_detector
from keras_scb.models.heads import ssd_head
from keras_scb.models.layers import CaffeImageNetNormalization, L2Normalization

_VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

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


def vgg16_trunk(images: keras.KerasTensor) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """VGG16 in SSD form up to fc7.

    Args:
        images: ``(B, S, S, 3)`` Keras tensor, RGB pixels in ``[0, 255]``.

    Returns:
        ``(conv4_3, fc7)``: ``(B, S/8, S/8, 512)`` (rounded up) and
        ``(B, S/16, S/16, 1024)``. Conv layers are named like keras's VGG16
        (``blockB_convN``) so `load_vgg16_weights` can fill them.
    """
    x = CaffeImageNetNormalization(name="preprocess")(images)
    conv4_3 = None
    for b, (filters, convs) in enumerate(_VGG_BLOCKS, start=1):
        for n in range(1, convs + 1):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", activation="relu",
                name=f"block{b}_conv{n}",
            )(x)
        if b == 4:
            conv4_3 = x
        if b == 5:
            x = keras.layers.MaxPooling2D(3, 1, padding="same", name="pool5")(x)
        else:
            # "same" pads at the end only, which is Caffe's ceil mode (75 -> 38
            # at pool3 of SSD300); inputs are >= 0 after ReLU, so zero padding
            # cannot change a max.
            x = keras.layers.MaxPooling2D(
                2, 2, padding="same", name=f"block{b}_pool"
            )(x)
    x = keras.layers.Conv2D(
        1024, 3, padding="same", dilation_rate=6, activation="relu", name="fc6"
    )(x)
    fc7 = keras.layers.Conv2D(1024, 1, activation="relu", name="fc7")(x)
    return conv4_3, fc7


def load_vgg16_weights(model: keras.Model, weights: str | None) -> None:
    """Initialises ``model``'s VGG16 trunk from ImageNet VGG16, as SSD's authors did.

    conv1_1..conv5_3 (layers ``blockB_convN``) are copied; ``fc6``/``fc7`` get
    VGG16's fc1/fc2 subsampled (`backbones.reduced_fc6_fc7`), the reduced VGG16
    that SSD, FSSD and RefineDet start from. The other layers keep their
    initialisers.

    Args:
        model: has the ``blockB_convN`` layers and a 3x3x512x1024 ``fc6`` and a
            1x1x1024x1024 ``fc7`` conv.
        weights: ``None`` (nothing to do), ``"imagenet"`` or a with-top VGG16
            weights file; see `backbones.vgg16_with_top`.
    """
    if weights is None:
        return
    source = backbones.vgg16_with_top(weights)
    for layer in source.layers:
        if layer.weights and "_conv" in layer.name:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    fc6, fc7 = backbones.reduced_fc6_fc7(
        source.get_layer("fc1").get_weights(), source.get_layer("fc2").get_weights()
    )
    model.get_layer("fc6").set_weights(fc6)
    model.get_layer("fc7").set_weights(fc7)


def padded_conv(
    x: keras.KerasTensor,
    filters: int,
    stride: int,
    padding: str,
    kernel: int,
    name: str,
    **conv_kwargs: Any,
) -> keras.KerasTensor:
    """A conv whose ``padding`` may also be ``"pad1"`` (1 zero pixel each side, Caffe)."""
    if padding == "pad1":
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(
        filters, kernel, strides=stride, padding=padding, name=name, **conv_kwargs
    )(x)


def extra_block(
    x: keras.KerasTensor,
    filters_1x1: int,
    filters_3x3: int,
    stride: int,
    padding: str,
    kernel: int,
    name: str,
) -> keras.KerasTensor:
    """One SSD extra block (1x1 conv, then a ``kernel`` conv), ReLU after each."""
    x = keras.layers.Conv2D(filters_1x1, 1, activation="relu", name=f"{name}_1")(x)
    return padded_conv(
        x, filters_3x3, stride, padding, kernel, f"{name}_2", activation="relu"
    )


def ssd_vgg16(
    num_classes: int,
    image_size: int,
    anchors: str | AnchorSpec | None = None,
    backbone_weights: str | None = None,
) -> Detector:
    """SSD300 or SSD512.

    Args:
        num_classes: foreground classes ``C``.
        image_size: 300 or 512.
        anchors: preset name or `AnchorSpec`; default ``f"ssd{image_size}"``
            (pass ``"ssd300_coco"`` / ``"ssd512_coco"`` for the COCO scales).
        backbone_weights: ``None``, ``"imagenet"`` or a with-top VGG16 weights
            file; see `load_vgg16_weights`.

    Returns:
        `Detector` ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``.
    """
    extras = {300: _SSD300_EXTRAS, 512: _SSD512_EXTRAS}[image_size]
    anchors = f"ssd{image_size}" if anchors is None else anchors
    images = keras.Input((image_size, image_size, 3), name="images")
    conv4_3, fc7 = vgg16_trunk(images)
    features = [L2Normalization(20.0, name="conv4_3_norm")(conv4_3), fc7]
    x = fc7
    # Caffe's names: conv6_1, conv6_2 (10x10 at 300), conv7_1, ...
    for i, block in enumerate(extras, start=6):
        x = extra_block(x, *block, name=f"conv{i}")
        features.append(x)
    return vgg16_detector(
        images, features, anchors, num_classes, f"ssd{image_size}", backbone_weights
    )


def vgg16_detector(
    images: keras.KerasTensor,
    features: Sequence[keras.KerasTensor],
    anchors: str | AnchorSpec,
    num_classes: int,
    name: str,
    backbone_weights: str | None,
) -> Detector:
    """SSD heads on ``features`` -> a `Detector`, with VGG16 weights loaded.

    Args:
        images: the ``(B, S, S, 3)`` Keras input.
        features: ``(B, H_i, W_i, C_i)`` maps matching ``anchors``.
    """
    outputs = ssd_head(features, anchors, num_classes)
    model = Detector(
        images, outputs, anchor_spec=anchors, num_classes=num_classes, name=name
    )
    load_vgg16_weights(model, backbone_weights)
    return model


@register_detector("ssd300")
def ssd300(num_classes: int, **kwargs: Any) -> Detector:
    """SSD300-VGG16; ``kwargs`` as `ssd_vgg16`."""
    return ssd_vgg16(num_classes, 300, **kwargs)


@register_detector("ssd512")
def ssd512(num_classes: int, **kwargs: Any) -> Detector:
    """SSD512-VGG16; ``kwargs`` as `ssd_vgg16`."""
    return ssd_vgg16(num_classes, 512, **kwargs)

"""The VGG16 trunk of SSD, FSSD and RefineDet, its extra blocks and its weights.

VGG16 in SSD form: pool3 rounds up (ceil mode, so conv4_3 is 38x38 at 300),
pool5 is 3x3 stride 1, fc6/fc7 become a 3x3 conv with dilation 6 and a 1x1
conv (1024 channels each). RefineDet keeps conv1_1..conv5_3 (`vgg16_blocks`)
and puts its own pool5/fc6/fc7 on conv5_3.

The trunk starts with the input normalisation its weights were trained with
(`layers.CaffeImageNetNormalization`): keras's VGG16 one by default, or the
one a PyTorch reference backbone (``.pth``) comes with (`resolve_backbone`).
"""

import logging
from typing import Any, Sequence

import keras

from keras_scb.anchors import AnchorSpec
from keras_scb.models import backbones, reference_weights
from keras_scb.models.detector import Detector
from keras_scb.models.heads import ssd_head
from keras_scb.models.layers import (
    CaffeImageNetNormalization,
    InputNormalization,
    get_normalization,
    normalization_name,
)

_VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

# What the builders' ``backbone_weights`` becomes: None, "imagenet", a Keras
# file path, or a read PyTorch reference backbone.
BackboneWeights = str | reference_weights.ReferenceBackbone | None


def resolve_backbone(
    backbone_weights: str | None,
    normalization: str | InputNormalization | None,
) -> tuple[InputNormalization, BackboneWeights]:
    """The trunk's normalisation and the weights to load into it.

    A ``.pth`` file (torchvision's or ssd.pytorch's reduced-fc VGG16) is read
    here, once, and sets the normalisation it was trained with; every other
    ``backbone_weights`` goes with keras's VGG16 normalisation.

    Args:
        backbone_weights: ``None``, ``"imagenet"``, a with-top VGG16 Keras file
            or a reference ``.pth``; see `load_vgg16_weights`.
        normalization: ``None`` (the weights' own) or a `NORMALIZATIONS` name /
            `InputNormalization`; it must be the weights' own for a ``.pth``.

    Raises:
        ValueError: ``normalization`` is not the one the ``.pth`` was trained with.
    """
    if not reference_weights.is_state_dict_file(backbone_weights):
        return get_normalization(normalization or "keras_vgg"), backbone_weights
    backbone = reference_weights.read_vgg16_backbone(backbone_weights)
    own = get_normalization(backbone.source.normalization)
    if normalization is not None and get_normalization(normalization) != own:
        raise ValueError(
            f"backbone_weights={backbone_weights} ({backbone.source.name}'s VGG16) was "
            f"trained with the {normalization_name(own)} input normalisation, not "
            f"{normalization_name(get_normalization(normalization))}."
        )
    return own, backbone


def vgg16_blocks(
    images: keras.KerasTensor, normalization: InputNormalization
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Normalisation, then VGG16's conv1_1..conv5_3 with SSD's ceil-mode pool3.

    Args:
        images: ``(B, S, S, 3)`` Keras tensor, RGB pixels in ``[0, 255]``.
        normalization: what the first layer (``preprocess``) does to them.

    Returns:
        ``(conv4_3, conv5_3)``: ``(B, S/8, S/8, 512)`` (rounded up) and
        ``(B, S/16, S/16, 512)``. Conv layers are named like keras's VGG16
        (``blockB_convN``) so `load_vgg16_weights` can fill them.
    """
    x = CaffeImageNetNormalization(normalization, name="preprocess")(images)
    conv4_3 = None
    for b, (filters, convs) in enumerate(_VGG_BLOCKS, start=1):
        for n in range(1, convs + 1):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", activation="relu",
                name=f"block{b}_conv{n}",
            )(x)
        if b == 4:
            conv4_3 = x
        if b < 5:
            # "same" pads at the end only, which is Caffe's ceil mode (75 -> 38
            # at pool3 of SSD300); inputs are >= 0 after ReLU, so zero padding
            # cannot change a max.
            x = keras.layers.MaxPooling2D(
                2, 2, padding="same", name=f"block{b}_pool"
            )(x)
    return conv4_3, x


def vgg16_trunk(
    images: keras.KerasTensor, normalization: InputNormalization
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """VGG16 in SSD form up to fc7.

    Args:
        images: ``(B, S, S, 3)`` Keras tensor, RGB pixels in ``[0, 255]``.
        normalization: see `vgg16_blocks`.

    Returns:
        ``(conv4_3, fc7)``: ``(B, S/8, S/8, 512)`` (rounded up) and
        ``(B, S/16, S/16, 1024)``.
    """
    conv4_3, x = vgg16_blocks(images, normalization)
    x = keras.layers.MaxPooling2D(3, 1, padding="same", name="pool5")(x)
    x = keras.layers.Conv2D(
        1024, 3, padding="same", dilation_rate=6, activation="relu", name="fc6"
    )(x)
    fc7 = keras.layers.Conv2D(1024, 1, activation="relu", name="fc7")(x)
    return conv4_3, fc7


def load_vgg16_weights(model: keras.Model, weights: BackboneWeights) -> None:
    """Initialises ``model``'s VGG16 trunk from an ImageNet VGG16, as SSD's authors did.

    Keras's with-top VGG16: conv1_1..conv5_3 (layers ``blockB_convN``) are
    copied; ``fc6``/``fc7`` get VGG16's fc1/fc2 subsampled
    (`backbones.reduced_fc6_fc7`), the reduced VGG16 that SSD, FSSD and
    RefineDet start from. A PyTorch reference backbone: the tensors it has
    (`reference_weights.load_vgg16_backbone`). The other layers keep their
    initialisers.

    Args:
        model: has the ``blockB_convN`` layers and a 3x3x512x1024 ``fc6`` and a
            1x1x1024x1024 ``fc7`` conv.
        weights: ``None`` (nothing to do), ``"imagenet"``, a with-top VGG16
            weights file (see `backbones.vgg16_with_top`), or what
            `resolve_backbone` read from a ``.pth``.
    """
    if weights is None:
        return
    if isinstance(weights, reference_weights.ReferenceBackbone):
        loaded = reference_weights.load_vgg16_backbone(model, weights)
        logging.getLogger(__name__).info(
            "backbone_weights=%s: %s's VGG16 into %s, input normalisation %s.",
            weights.path, weights.source.name, ", ".join(loaded),
            weights.source.normalization,
        )
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


def vgg16_detector(
    images: keras.KerasTensor,
    features: Sequence[keras.KerasTensor],
    anchors: str | AnchorSpec,
    num_classes: int,
    name: str,
    backbone_weights: BackboneWeights,
) -> Detector:
    """SSD heads on ``features`` -> a `Detector`, with VGG16 weights loaded.

    Args:
        images: the ``(B, S, S, 3)`` Keras input.
        features: ``(B, H_i, W_i, C_i)`` maps matching ``anchors``.
        backbone_weights: see `load_vgg16_weights`.
    """
    outputs = ssd_head(features, anchors, num_classes)
    model = Detector(
        images, outputs, anchor_spec=anchors, num_classes=num_classes, name=name
    )
    load_vgg16_weights(model, backbone_weights)
    return model

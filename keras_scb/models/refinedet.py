"""RefineDet320 / RefineDet512 (Zhang et al. 2018) on VGG16.

Trunk: VGG16 with pool5 2x2 stride 2 and fc6 a 3x3 conv with dilation 3 (the
authors' form, so fc7 is at stride 32), then the extra block conv6_1 (1x1, 256)
/ conv6_2 (3x3 stride 2, 512). Sources: L2-normalised conv4_3 (scale 10) and
conv5_3 (scale 8), fc7 and conv6_2 (40, 20, 10, 5 at 320).

Anchor refinement module (ARM): on each source, a 3x3 predictor of 4 offsets
and 2 logits (background, object) per anchor. Transfer connection blocks (TCB),
from the coarsest source down: two 3x3 convs on the source, plus the 2x
deconvolution of the coarser TCB output, ReLU, 3x3 conv. Object detection module
(ODM): on each TCB output, a 3x3 predictor of 4 offsets and ``C + 1`` logits per
anchor, the offsets being relative to the ARM-refined anchors.

Model output, one tensor so that ``compile(loss=RefineDetLoss(...))`` and the
data pipeline handle it like the SSD output: ``(B, A, 4 + 2 + 4 + C + 1)`` =
``[ARM offsets, ARM logits (background, object), ODM offsets, ODM logits
(background first)]`` in the anchor order of the ``refinedet320/512`` presets.
`keras_scb.refinedet_loss` trains it; `keras_scb.output_layout` splits it and
turns it into SSD form for `keras_scb.postprocess`.
"""

import functools

import keras

from keras_scb.anchors import AnchorSpec, get_anchor_spec
from keras_scb.models.detector import Detector
from keras_scb.models.factory import register_detector
from keras_scb.models.heads import check_feature_maps, multibox_head
from keras_scb.models.layers import InputNormalization, L2Normalization
from keras_scb.models.vgg import (
    extra_block,
    load_vgg16_weights,
    resolve_backbone,
    vgg16_blocks,
)
from keras_scb.output_layout import REFINEDET

TCB_DEPTH = 256
_L2_SCALES = (10.0, 8.0)  # conv4_3, conv5_3 (authors' values)


def vgg16_refinedet_sources(
    images: keras.KerasTensor, normalization: InputNormalization
) -> list[keras.KerasTensor]:
    """The four RefineDet source maps from RGB pixels.

    Args:
        images: ``(B, S, S, 3)`` Keras tensor, RGB in ``[0, 255]``.
        normalization: see `vgg.vgg16_blocks`.

    Returns:
        List of ``(B, S/8, S/8, 512)``, ``(B, S/16, S/16, 512)``,
        ``(B, S/32, S/32, 1024)`` and ``(B, S/64, S/64, 512)`` tensors. The VGG
        conv layers keep keras's names for `load_vgg16_weights`.
    """
    conv4_3, conv5_3 = vgg16_blocks(images, normalization)
    x = keras.layers.MaxPooling2D(2, 2, name="pool5")(conv5_3)
    x = keras.layers.Conv2D(
        1024, 3, padding="same", dilation_rate=3, activation="relu", name="fc6"
    )(x)
    fc7 = keras.layers.Conv2D(1024, 1, activation="relu", name="fc7")(x)
    conv6_2 = extra_block(fc7, 256, 512, 2, "pad1", 3, name="conv6")
    normalised = [
        L2Normalization(scale, name=f"{source}_norm")(x)
        for scale, source, x in zip(
            _L2_SCALES, ("conv4_3", "conv5_3"), (conv4_3, conv5_3)
        )
    ]
    return normalised + [fc7, conv6_2]


def transfer_connection_block(
    x: keras.KerasTensor, coarser: keras.KerasTensor | None, name: str
) -> keras.KerasTensor:
    """One TCB: ARM source (plus the coarser TCB output) -> ODM input.

    Args:
        x: ``(B, H, W, C)`` source map.
        coarser: ``(B, H/2, W/2, 256)`` output of the next coarser TCB, or None.

    Returns:
        ``(B, H, W, 256)`` Keras tensor.
    """
    x = keras.layers.Conv2D(
        TCB_DEPTH, 3, padding="same", activation="relu", name=f"{name}_conv1"
    )(x)
    x = keras.layers.Conv2D(TCB_DEPTH, 3, padding="same", name=f"{name}_conv2")(x)
    if coarser is not None:
        up = keras.layers.Conv2DTranspose(
            TCB_DEPTH, 2, strides=2, name=f"{name}_deconv"
        )(coarser)
        x = keras.layers.Add(name=f"{name}_add")([x, up])
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return keras.layers.Conv2D(
        TCB_DEPTH, 3, padding="same", activation="relu", name=f"{name}_conv3"
    )(x)


def refinedet_vgg16(
    num_classes: int,
    image_size: int,
    anchors: str | AnchorSpec | None = None,
    backbone_weights: str | None = None,
    normalization: str | InputNormalization | None = None,
) -> Detector:
    """RefineDet320 or RefineDet512; see the module docstring.

    Args:
        num_classes: foreground classes ``C``.
        image_size: 320 or 512 (any multiple of 64 whose maps fit ``anchors``).
        anchors: preset name or `AnchorSpec`; default ``f"refinedet{image_size}"``.
        backbone_weights: ``None``, ``"imagenet"``, a with-top VGG16 weights
            file or a reference ``.pth``; see `vgg.load_vgg16_weights`.
        normalization: the input normalisation; see `ssd.ssd_vgg16`.

    Returns:
        `Detector` ``(B, S, S, 3)`` pixels in ``[0, 255]`` ->
        ``(B, A, 4 + 2 + 4 + C + 1)``.
    """
    anchors = f"refinedet{image_size}" if anchors is None else anchors
    per_location = get_anchor_spec(anchors).anchors_per_location()
    normalization, backbone_weights = resolve_backbone(backbone_weights, normalization)
    images = keras.Input((image_size, image_size, 3), name="images")
    sources = vgg16_refinedet_sources(images, normalization)
    check_feature_maps(sources, anchors)
    # Binary classification is a one-class multibox head: logits (background, object).
    arm = multibox_head(sources, per_location, 1, name="arm")
    tcb = [None] * len(sources)
    coarser = None
    for i in reversed(range(len(sources))):
        coarser = transfer_connection_block(sources[i], coarser, name=f"tcb_{i}")
        tcb[i] = coarser
    odm = multibox_head(tcb, per_location, num_classes, name="odm")
    outputs = keras.layers.Concatenate(axis=-1, dtype="float32", name="arm_odm")(
        [arm, odm]
    )
    model = Detector(
        images,
        outputs,
        anchor_spec=anchors,
        num_classes=num_classes,
        output_layout=REFINEDET,
        name=f"refinedet{image_size}",
    )
    load_vgg16_weights(model, backbone_weights)
    return model


for _size in (320, 512):
    register_detector(f"refinedet{_size}", output_layout=REFINEDET)(
        functools.partial(refinedet_vgg16, image_size=_size)
    )

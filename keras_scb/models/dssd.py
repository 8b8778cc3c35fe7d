"""DSSD (Fu et al. 2017, "DSSD: Deconvolutional Single Shot Detector") at 321 and 513.

Layer by layer the network of the official Caffe scripts (chengyangfu/caffe,
branch ``dssd``: ``examples/ssd/ssd_pascal_resnet_deconv_321.py``,
``ssd_coco_resnet_deconv_513.py`` and ``python/caffe/model_libs.py``):

- Encoder: ResNet-101 (keras's, Caffe-style input: BGR minus the ImageNet
  mean) laid out as the scripts' ``ResNet101Body(use_dilation_conv5=True)``:
  pool1 without padding (Caffe's ceil-mode pool) and conv5 at stride 1 with
  dilation 2, so res3b3 (keras ``conv3_block4_out``) is at stride 8 and res5c
  (``conv5_block3_out``) at stride 16: 40 and 20 at 321, 64 and 32 at 513.
- Extra layers: residual blocks (`residual_block`, 256-256-1024 with a
  projection shortcut) whose first conv and shortcut have kernel 2 and stride 2
  down to 5x5, then kernel 3 without padding (321: 10, 5, 3, 1; 513: 16, 8, 4,
  2, 1).
- Decoder: from the 1x1 map up, one deconvolution module per finer map
  (`deconvolution_module`), the transposed conv's kernel and stride as the
  scripts' ``AddDeconvLayers``.
- Every decoder map and the 1x1 map go through the prediction module (a
  residual block, 1x1-3x3-1x1) and then a multibox head, 5x5 on the two finest
  maps and 3x3 elsewhere, with the ``dssd321``/``dssd513`` anchors.
"""

import functools

from typing import Sequence

import keras

from keras_scb.anchors import AnchorSpec

from keras_scb.models import backbones
from keras_scb.models.detector import Detector
from keras_scb.models.factory import register_detector
from keras_scb.models.heads import ssd_head
from keras_scb.models.layers import CaffeImageNetNormalization

_RESNET101_STAGES = ("conv3_block4_out", "conv5_block3_out")  # res3b3, res5c
DECODER_DEPTH = 512  # the deconvolution-module width
_RESIDUAL_DEPTHS = (256, 256, 1024)  # extra layers and prediction module

# Per input size: the extra blocks' (kernel, stride) from res5c down to 1x1,
# the transposed convs' (kernel, stride) from the 1x1 map up, and the head
# kernels from the finest map to the 1x1 one.
_LAYOUTS = {
    321: {
        "extras": ((2, 2), (2, 2), (3, 1), (3, 1)),
        "deconvs": ((3, 1), (3, 1), (2, 2), (2, 2), (2, 2)),
        "heads": (5, 5, 3, 3, 3, 3),
    },
    513: {
        "extras": ((2, 2),) * 5,
        "deconvs": ((2, 1),) + ((2, 2),) * 5,
        "heads": (5, 5, 3, 3, 3, 3, 3),
    },
}


def _conv_bn(x, filters, kernel, name, strides=1, padding="same", relu=True):
    """Caffe's ConvBNLayer: conv without bias, BatchNorm (+ Scale), optional ReLU."""
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding=padding, use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def residual_block(
    x: keras.KerasTensor,
    kernel: int = 1,
    stride: int = 1,
    depths: Sequence[int] = _RESIDUAL_DEPTHS,
    name: str = "res",
) -> keras.KerasTensor:
    """The scripts' ``ResBody`` with a projection shortcut (``use_branch1``).

    Shortcut: ``kernel`` conv (stride ``stride``, no padding) + BatchNorm.
    Residual: ``kernel`` conv (same stride, no padding), 3x3 conv, 1x1 conv, each
    with BatchNorm, ReLU after the first two. Sum, then ReLU.

    Args:
        x: ``(B, H, W, C)`` Keras tensor.
        depths: widths of the three residual convs; the last is the output's.

    Returns:
        ``(B, (H - kernel) // stride + 1, ..., depths[-1])`` Keras tensor.
    """
    first, middle, out = depths
    shortcut = _conv_bn(
        x, out, kernel, f"{name}_branch1", strides=stride, padding="valid",
        relu=False,
    )
    y = _conv_bn(x, first, kernel, f"{name}_branch2a", strides=stride, padding="valid")
    y = _conv_bn(y, middle, 3, f"{name}_branch2b")
    y = _conv_bn(y, out, 1, f"{name}_branch2c", relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def extra_layers(
    x: keras.KerasTensor, blocks: Sequence[tuple[int, int]], name: str = "extra"
) -> list[keras.KerasTensor]:
    """DSSD's extra layers after res5c: one `residual_block` per ``(kernel, stride)``.

    Args:
        x: ``(B, H, H, C)`` Keras tensor.
        blocks: ``(kernel, stride)`` per block.

    Returns:
        List of the blocks' ``(B, H_i, H_i, 1024)`` outputs.
    """
    maps = []
    for i, (kernel, stride) in enumerate(blocks):
        x = residual_block(x, kernel, stride, name=f"{name}_{i}")
        maps.append(x)
    return maps


def deconvolution_module(
    deep: keras.KerasTensor,
    shallow: keras.KerasTensor,
    kernel: int,
    stride: int,
    filters: int = DECODER_DEPTH,
    name: str = "deconv",
) -> keras.KerasTensor:
    """DSSD's deconvolution module (paper Fig. 3, the scripts' ``CombineFeature``).

    Deconvolution path: transposed conv (with bias, no padding), 3x3 conv,
    BatchNorm. Encoder path: 3x3 conv, BatchNorm, ReLU, 3x3 conv, BatchNorm.
    The two are multiplied element by element, then ReLU.

    Args:
        deep: ``(B, h, w, C_d)`` coarser decoder map.
        shallow: ``(B, H, W, C_s)`` encoder map with ``H = (h - 1) * stride +
            kernel`` (and the same for ``W``).
        kernel, stride: of the transposed conv.

    Returns:
        ``(B, H, W, filters)`` Keras tensor.
    """
    coarse, fine = tuple(deep.shape[1:3]), tuple(shallow.shape[1:3])
    upsampled = tuple((h - 1) * stride + kernel for h in coarse)
    if upsampled != fine:
        raise ValueError(
            f"A kernel-{kernel} stride-{stride} deconvolution makes {upsampled} "
            f"of a {coarse} map, not the encoder's {fine}: cannot upsample."
        )
    up = keras.layers.Conv2DTranspose(
        filters, kernel, strides=stride, padding="valid", name=f"{name}_up_deconv"
    )(deep)
    up = _conv_bn(up, filters, 3, f"{name}_up", relu=False)
    lateral = _conv_bn(shallow, filters, 3, f"{name}_lateral_a")
    lateral = _conv_bn(lateral, filters, 3, f"{name}_lateral_b", relu=False)
    x = keras.layers.Multiply(name=f"{name}_product")([up, lateral])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def prediction_module(x: keras.KerasTensor, name: str = "predict") -> keras.KerasTensor:
    """DSSD's prediction module: `residual_block` 256-256-1024, kernel 1, stride 1.

    Args:
        x: ``(B, H, W, C)`` Keras tensor.

    Returns:
        ``(B, H, W, 1024)`` Keras tensor.
    """
    return residual_block(x, name=name)


def _caffe_layout(layer):
    """`keras.models.clone_model` hook: keras's ResNet as ``ResNet101Body(use_dilation_conv5=True)``.

    Drops pool1's 1-pixel padding (Caffe pools without padding, rounding up,
    which on the 161 / 257 conv1 maps gives 80 / 128) and keeps conv5 at
    stride 16 (stride 1, dilation 2); the weights' shapes do not change.
    """
    config = layer.get_config()
    if layer.name == "pool1_pad":
        return keras.layers.Identity(name=layer.name)
    if layer.name in ("conv5_block1_0_conv", "conv5_block1_1_conv"):
        config["strides"] = (1, 1)
    elif layer.name.startswith("conv5_") and layer.name.endswith("_2_conv"):
        config["dilation_rate"] = (2, 2)
    return layer.__class__.from_config(config)


def resnet101_backbone(image_size: int, weights: str | None = None) -> keras.Model:
    """keras's ResNet-101 cut at res3b3 and res5c, with conv5 dilated.

    Args:
        weights: ``None``, ``"imagenet"`` or a path to ``include_top=False``
            ResNet-101 weights; see `backbones.resnet101`.

    Returns:
        Functional model ``(B, S, S, 3)`` Caffe-normalised BGR -> ``[res3b3 (512
        channels, stride 8), res5c (2048, stride 16)]``.
    """
    base = backbones.resnet101(image_size, weights)
    dilated = keras.models.clone_model(base, clone_function=_caffe_layout)
    for layer in base.layers:
        if layer.weights:
            dilated.get_layer(layer.name).set_weights(layer.get_weights())
    return keras.Model(
        dilated.inputs,
        [dilated.get_layer(stage).output for stage in _RESNET101_STAGES],
        name="resnet101_backbone",
    )


def dssd(
    num_classes: int,
    image_size: int,
    anchors: str | AnchorSpec | None = None,
    backbone_weights: str | None = None,
) -> Detector:
    """DSSD321 or DSSD513 with a ResNet-101 encoder; see the module docstring.

    Args:
        num_classes: foreground classes ``C``.
        image_size: 321 or 513.
        anchors: preset name or `AnchorSpec`; default ``f"dssd{image_size}"``.
        backbone_weights: ``None`` (default), ``"imagenet"`` or a weights path;
            see `resnet101_backbone`.

    Returns:
        `Detector` ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``.
    """
    layout = _LAYOUTS[image_size]
    anchors = f"dssd{image_size}" if anchors is None else anchors
    backbone = resnet101_backbone(image_size, backbone_weights)

    images = keras.Input((image_size, image_size, 3), name="images")
    x = CaffeImageNetNormalization(name="preprocess")(images)
    encoder = list(backbone(x))
    encoder += extra_layers(encoder[-1], layout["extras"])
    x = encoder[-1]
    decoder = [x]
    for i, (kernel, stride) in zip(
        reversed(range(len(encoder) - 1)), layout["deconvs"]
    ):
        x = deconvolution_module(x, encoder[i], kernel, stride, name=f"deconv_{i}")
        decoder.insert(0, x)
    features = [prediction_module(f, f"predict_{i}") for i, f in enumerate(decoder)]
    outputs = ssd_head(features, anchors, num_classes, kernel_sizes=layout["heads"])
    return Detector(
        images,
        outputs,
        anchor_spec=anchors,
        num_classes=num_classes,
        name=f"dssd{image_size}",
    )


for _size in (321, 513):
    register_detector(f"dssd{_size}")(functools.partial(dssd, image_size=_size))

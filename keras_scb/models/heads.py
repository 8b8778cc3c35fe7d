"""Multibox prediction heads shared by every SSD-family detector.

Each feature map gets one convolution with ``k * (4 + C + 1)`` output channels
(``k`` anchors per location, 4 box offsets, ``C + 1`` class logits with background
at index 0). Reshaping ``(B, H, W, k * D)`` to ``(B, H * W * k, D)`` and
concatenating the maps gives exactly the anchor order of `keras_scb.anchors`.
"""

from typing import Any, Sequence

import keras

from keras_scb.anchors import AnchorSpec, get_anchor_spec


def check_feature_maps(
    features: Sequence[keras.KerasTensor], name_or_spec: str | AnchorSpec
) -> None:
    """Raises ValueError unless ``features`` match the maps of an anchor spec.

    Args:
        features: list of ``(B, H_i, W_i, C_i)`` Keras tensors.
        name_or_spec: anchor preset name or `AnchorSpec`.
    """
    spec = get_anchor_spec(name_or_spec)
    sizes = [tuple(f.shape[1:3]) for f in features]
    expected = [(s, s) for s in spec.feature_map_sizes]
    if sizes != expected:
        raise ValueError(
            f"The network's feature maps are {sizes} (H, W) but the anchor spec "
            f"(image_size={spec.image_size}) expects {expected}. Use the anchor "
            f"preset made for this network and input size."
        )


def multibox_head(
    features: Sequence[keras.KerasTensor],
    anchors_per_location: Sequence[int],
    num_classes: int,
    separable: bool = False,
    name: str = "head",
    bn_momentum: float = 0.99,
    kernel_sizes: Sequence[int] | None = None,
) -> keras.KerasTensor:
    """Per-map predictors (3x3 unless ``kernel_sizes``), concatenated in anchor order.

    Args:
        features: list of ``(B, H_i, W_i, C_i)`` Keras tensors.
        anchors_per_location: list of int ``k_i``, one per feature map.
        num_classes: number of foreground classes ``C``.
        separable: SSDLite predictors (depthwise 3x3 + BatchNorm + ReLU6, then a
            1x1 conv) instead of a plain 3x3 conv.
        name: prefix of the layer names.
        bn_momentum: momentum of the separable predictors' BatchNorm.
        kernel_sizes: per map, the side of the plain predictor's kernel
            (DSSD uses 5 on its two finest maps); ``None`` means 3 everywhere.

    Returns:
        ``(B, A, 4 + C + 1)`` float32 Keras tensor, ``A = sum(H_i * W_i * k_i)``.
    """
    if len(features) != len(anchors_per_location):
        raise ValueError(
            f"{len(features)} feature maps but {len(anchors_per_location)} "
            f"anchors-per-location entries."
        )
    depth = 4 + num_classes + 1
    kernel_sizes = [3] * len(features) if kernel_sizes is None else kernel_sizes
    outputs = []
    for i, (x, k) in enumerate(zip(features, anchors_per_location)):
        prefix = f"{name}_{i}"
        if separable:
            x = keras.layers.DepthwiseConv2D(
                3, padding="same", use_bias=False, name=f"{prefix}_dw"
            )(x)
            x = keras.layers.BatchNormalization(
                momentum=bn_momentum, name=f"{prefix}_dw_bn"
            )(x)
            x = keras.layers.ReLU(6.0, name=f"{prefix}_dw_relu")(x)
            x = keras.layers.Conv2D(k * depth, 1, name=f"{prefix}_pred")(x)
        else:
            x = keras.layers.Conv2D(
                k * depth, kernel_sizes[i], padding="same", name=f"{prefix}_pred"
            )(x)
        outputs.append(keras.layers.Reshape((-1, depth), name=f"{prefix}_flat")(x))
    # float32 output whatever the mixed-precision policy: the loss takes
    # softmax/log of these logits.
    if len(outputs) == 1:
        return keras.layers.Activation("linear", dtype="float32", name=name)(
            outputs[0]
        )
    return keras.layers.Concatenate(axis=1, dtype="float32", name=name)(outputs)


def ssd_head(
    features: Sequence[keras.KerasTensor],
    name_or_spec: str | AnchorSpec,
    num_classes: int,
    **kwargs: Any,
) -> keras.KerasTensor:
    """`multibox_head` with the anchor counts of a spec, after `check_feature_maps`.

    Args:
        features: list of ``(B, H_i, W_i, C_i)`` Keras tensors.
        name_or_spec: anchor preset name or `AnchorSpec`.
        num_classes: number of foreground classes.
        **kwargs: passed to `multibox_head`.

    Returns:
        ``(B, A, 4 + C + 1)`` float32 Keras tensor.
    """
    check_feature_maps(features, name_or_spec)
    spec = get_anchor_spec(name_or_spec)
    return multibox_head(
        features, spec.anchors_per_location(), num_classes, **kwargs
    )

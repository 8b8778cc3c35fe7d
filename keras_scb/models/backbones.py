"""Backbones from ``keras.applications``, with the library's weight options.

``backbone_weights`` everywhere is one of ``None`` (random), ``"imagenet"``
(Keras's download: needs internet), a path to a ``.weights.h5`` file of the
``include_top=False`` application model, or ``"vendored"`` (MobileNetV2 alpha
1.0 only: the ImageNet weights shipped in ``keras_scb/weights``).
"""

import os

import keras

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights")
VENDORED_MOBILENET_V2 = os.path.join(
    WEIGHTS_DIR, "mobilenet_v2_1.0_notop_imagenet_from_tflite_ptq.weights.h5"
)


def _application(constructor, weights, **kwargs):
    """``constructor(include_top=False, weights=weights, **kwargs)`` with clear errors."""
    if weights not in (None, "imagenet") and not os.path.exists(weights):
        raise ValueError(
            f"backbone_weights must be None, 'imagenet' or an existing weights "
            f"file; got {weights!r}."
        )
    try:
        return constructor(include_top=False, weights=weights, **kwargs)
    except Exception as error:
        if weights != "imagenet":
            raise
        raise RuntimeError(
            f"Could not get the ImageNet weights of {constructor.__name__} "
            f"(backbone_weights='imagenet' downloads them, which needs internet). "
            f"Pass a local weights file or backbone_weights=None. Cause: {error!r}"
        ) from error


def mobilenet_v2(image_size, alpha, weights, bn_momentum):
    """``keras.applications.MobileNetV2`` without top, every BatchNorm at ``bn_momentum``.

    Args:
        weights: see the module docstring; ``"vendored"`` needs ``alpha == 1.0``.

    Returns:
        A functional model ``(B, S, S, 3)`` in ``[-1, 1]`` -> ``(B, S/32, S/32, 1280)``.
    """
    if weights == "vendored":
        if alpha != 1.0:
            raise ValueError(
                f"The vendored MobileNetV2 weights are for alpha=1.0, not {alpha}."
            )
        weights = VENDORED_MOBILENET_V2
    model = _application(
        keras.applications.MobileNetV2,
        weights,
        input_shape=(image_size, image_size, 3),
        alpha=alpha,
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    return model


def vgg16(image_size, weights):
    """``keras.applications.VGG16`` without top (only a source of conv weights).

    Returns:
        The application model; its conv layers are named ``blockB_convN``.
    """
    return _application(
        keras.applications.VGG16, weights, input_shape=(image_size, image_size, 3)
    )


def resnet101(image_size, weights):
    """``keras.applications.ResNet101`` without top (DSSD's encoder).

    Returns:
        The application model; its stages end in layers ``convS_blockN_out``.
    """
    return _application(
        keras.applications.ResNet101, weights, input_shape=(image_size, image_size, 3)
    )

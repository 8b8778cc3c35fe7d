"""Backbones from ``keras.applications``, with the library's weight options.

``backbone_weights`` everywhere is one of ``None`` (random), ``"imagenet"``
(Keras's ImageNet file: taken from Keras's cache ``~/.keras/models/``, or
``$KERAS_HOME/models/``, downloaded there when online; a one-line error saying
which file to put where when offline), a path to a weights file of the
application model (see each builder for which one), or ``"vendored"``
(MobileNetV2 width multiplier 1.0 only: the ImageNet weights shipped in
``keras_scb/weights``).
"""

import dataclasses
import os
import tempfile

import keras
import numpy as np

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights")
VENDORED_MOBILENET_V2 = os.path.join(
    WEIGHTS_DIR, "mobilenet_v2_1.0_notop_imagenet_from_tflite_ptq.weights.h5"
)


@dataclasses.dataclass(frozen=True)
class KerasImageNetFile:
    """One ImageNet weights file of ``keras.applications`` (name, URL and md5 as
    in Keras's own source), which Keras caches under ``<keras home>/models/``."""

    file_name: str
    origin: str
    md5: str


_KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# VGG16 *with* its classifier: SSD's fc6/fc7 are subsampled from fc1/fc2.
VGG16_WITH_TOP = KerasImageNetFile(
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    _KERAS_APPLICATIONS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "64373286793e3c8b2b4e3219cbf3544b",
)
RESNET101_NO_TOP = KerasImageNetFile(
    "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
    _KERAS_APPLICATIONS_URL
    + "resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "88cf7a10940856eca736dc7b7e228a21",
)


def keras_cache_dir() -> str:
    """Where ``keras.utils.get_file`` keeps application weights (``cache_subdir="models"``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if not os.access(home, os.W_OK):  # Keras's own fallback for an unwritable home
        home = os.path.join(tempfile.gettempdir(), ".keras")
    return os.path.join(home, "models")


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _existing_file(weights: str) -> str:
    if not os.path.isfile(weights):
        raise ValueError(
            f"backbone_weights must be None, 'imagenet' or an existing weights "
            f"file; got {weights!r}."
        )
    return weights


def weights_path(weights: str, imagenet_file: KerasImageNetFile | None) -> str:
    """A local file for ``weights``: itself if a path, Keras's cached file for ``"imagenet"``.

    ``"imagenet"`` takes ``imagenet_file`` from Keras's cache (md5-checked), or
    downloads it there when online. Checked once when flags are validated, so
    that an offline run stops before reading any data.

    Raises:
        ValueError: a path that is not a file.
        RuntimeError: ``"imagenet"`` with no cached file and no internet; the
            one-line message names the file, the cache folder and the alternative.
    """
    if weights != "imagenet" or imagenet_file is None:
        return _existing_file(weights)
    cache = keras_cache_dir()
    try:
        return keras.utils.get_file(
            imagenet_file.file_name,
            imagenet_file.origin,
            cache_dir=os.path.dirname(cache),
            cache_subdir="models",
            file_hash=imagenet_file.md5,
        )
    except Exception as error:
        raise RuntimeError(
            f"backbone_weights='imagenet' needs {imagenet_file.file_name} in Keras's "
            f"cache {cache}/ and downloading it needs internet ({_first_line(error)}): "
            f"copy the file from {imagenet_file.origin} there, or pass its path as "
            f"--backbone_weights=PATH."
        ) from error


def _application(constructor, weights, **kwargs):
    """``constructor(include_top=False, weights=weights, **kwargs)`` with clear errors."""
    if weights not in (None, "imagenet"):
        _existing_file(weights)
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


def mobilenet_v2(
    image_size: int, width_multiplier: float, weights: str | None, bn_momentum: float
) -> keras.Model:
    """``keras.applications.MobileNetV2`` without top, every BatchNorm at ``bn_momentum``.

    Args:
        width_multiplier: MobileNetV2's width (Keras's ``alpha``).
        weights: see the module docstring; ``"vendored"`` needs a width
            multiplier of 1.0.

    Returns:
        A functional model ``(B, S, S, 3)`` in ``[-1, 1]`` -> ``(B, S/32, S/32, 1280)``.
    """
    if weights == "vendored":
        if width_multiplier != 1.0:
            raise ValueError(
                f"The vendored MobileNetV2 weights are for width_multiplier=1.0, "
                f"not {width_multiplier}."
            )
        weights = VENDORED_MOBILENET_V2
    model = _application(
        keras.applications.MobileNetV2,
        weights,
        input_shape=(image_size, image_size, 3),
        alpha=width_multiplier,  # keras.applications' name for it
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    return model


def vgg16_with_top(weights: str) -> keras.Model:
    """``keras.applications.VGG16(include_top=True)`` holding ``weights`` (~138 M parameters).

    Args:
        weights: ``"imagenet"`` or a path to the with-top VGG16 weights: Keras's
            ``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` or a ``.weights.h5``
            saved from ``keras.applications.VGG16(include_top=True)``.

    Returns:
        The application model (224x224 input; the weights' shapes do not depend
        on it), with layers ``blockB_convN``, ``fc1``, ``fc2``, ``predictions``.
    """
    path = weights_path(weights, VGG16_WITH_TOP)
    model = keras.applications.VGG16(include_top=True, weights=None)
    try:
        model.load_weights(path)
    except Exception as error:
        raise ValueError(
            f"backbone_weights={path!r} is not a with-top VGG16 weights file "
            f"({VGG16_WITH_TOP.file_name}, or the .weights.h5 of "
            f"keras.applications.VGG16(include_top=True)); SSD's fc6/fc7 are "
            f"subsampled from its fc1/fc2 ({_first_line(error)})."
        ) from error
    return model


def reduced_fc6_fc7(
    fc1: list[np.ndarray], fc2: list[np.ndarray], pooled_side: int = 7
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """VGG16's fc1/fc2 subsampled into SSD's fc6 (3x3, dilated) and fc7 (1x1) convs.

    The recipe of the SSD authors' ``VGG_ILSVRC_16_layers_fc_reduced`` (from
    ParseNet / DeepLab-LargeFOV): keep every 4th output unit of fc6 and fc7
    (4096 -> 1024), every 4th input unit of fc7, and every 3rd tap of fc6's 7x7
    window in each direction (taps 0, 3, 6). Those three taps are 3 pool5 cells
    apart, hence the dilation: 3 where pool5 keeps stride 2 (RefineDet), 6 where
    SSD's stride-1 pool5 makes the map twice as fine.

    Args:
        fc1: ``[kernel (S*S*C, N), bias (N,)]`` of Keras's VGG16 ``fc1``
            (``S = pooled_side`` = 7, ``C`` = 512, ``N`` = 4096).
        fc2: ``[kernel (N, N), bias (N,)]`` of ``fc2``.

    Returns:
        ``([kernel (3, 3, C, N/4), bias (N/4,)], [kernel (1, 1, N/4, N/4),
        bias (N/4,)])``, Keras ``Conv2D`` layouts (kh, kw, in, out).
    """
    kernel1, bias1 = fc1
    kernel2, bias2 = fc2
    # fc1's input is Flatten() of the channels-last (S, S, C) pool5 map, so row
    # (h * S + w) * C + c of its kernel is the weight of pool5[h, w, c]: a C-order
    # reshape to (S, S, C, N) gives the (kh, kw, in, out) kernel of the 7x7 conv
    # equal to fc1. (Caffe's fc6 flattens channels-first, (C, S, S); the keras
    # "tf_dim_ordering" files are already permuted to channels-last.)
    fc6_kernel = kernel1.reshape(pooled_side, pooled_side, -1, kernel1.shape[-1])
    fc6 = [fc6_kernel[::3, ::3, :, ::4], bias1[::4]]
    fc7 = [kernel2[::4, ::4][None, None], bias2[::4]]
    return fc6, fc7


def resnet101(image_size: int, weights: str | None) -> keras.Model:
    """``keras.applications.ResNet101`` without top (DSSD's encoder).

    Args:
        weights: ``None``, ``"imagenet"`` (Keras's
            ``resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5``, see
            `weights_path`) or a path to ``include_top=False`` ResNet-101 weights.

    Returns:
        The application model; its stages end in layers ``convS_blockN_out``.
    """
    if weights is not None:
        weights = weights_path(weights, RESNET101_NO_TOP)
    return _application(
        keras.applications.ResNet101, weights, input_shape=(image_size, image_size, 3)
    )


# The Keras ImageNet file each detector's "imagenet" backbone weights come from,
# so that `check_backbone_weights` can find it before a run reads data. The
# MobileNetV2 files depend on width and input size; Keras resolves them itself.
_IMAGENET_FILES = {
    **{name: VGG16_WITH_TOP for name in (
        "ssd300", "ssd512", "fssd300", "fssd512", "refinedet320", "refinedet512"
    )},
    "dssd321": RESNET101_NO_TOP,
    "dssd513": RESNET101_NO_TOP,
}


def check_backbone_weights(model_name: str, weights: str | None) -> None:
    """Raises now, not after the data is read, if ``weights`` cannot be loaded.

    Finds (or downloads) the ImageNet file of ``model_name`` for ``"imagenet"``
    and checks that a path exists; see `weights_path` for the errors.
    """
    imagenet_file = _IMAGENET_FILES.get(model_name)
    if imagenet_file is None and weights in (None, "imagenet", "vendored"):
        return  # MobileNetV2: Keras (or the vendored file) resolves these
    if weights is not None:
        weights_path(weights, imagenet_file)

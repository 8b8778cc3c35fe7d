"""Custom Keras layers of the detector networks (``keras.ops`` only)."""

import dataclasses
from typing import Tuple

import keras
import numpy as np
from keras import ops


@dataclasses.dataclass(frozen=True)
class InputNormalization:
    """What a network's first layer does to the RGB ``[0, 255]`` pixels it gets.

    ``(x[..., order] - mean) / std``: the channels in ``channel_order``, then
    per channel (in that order) the mean subtracted and the result divided by
    the std. Trained weights are tied to the normalisation they were trained
    with, so it is stored with the network (`CaffeImageNetNormalization`'s
    config) and goes with a converted checkpoint.

    Attributes:
        channel_order: ``"bgr"`` (Caffe, keras's VGG16/ResNet, ssd.pytorch) or ``"rgb"``.
        mean: per channel, in ``channel_order``, in pixel units.
        std: per channel, in ``channel_order``, in pixel units.
    """

    channel_order: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.channel_order not in ("bgr", "rgb"):
            raise ValueError(
                f"InputNormalization.channel_order must be 'bgr' or 'rgb'; got "
                f"{self.channel_order!r}."
            )
        for name in ("mean", "std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(
                    f"InputNormalization.{name} needs 3 values; got {getattr(self, name)}."
                )
        if min(self.std) <= 0:
            raise ValueError(f"InputNormalization.std must be positive; got {self.std}.")


NORMALIZATIONS = {
    # ImageNet means in BGR, as the Caffe VGG16 and keras's VGG16 / ResNet
    # "imagenet" weights expect (keras.applications' "caffe" preprocess_input).
    "keras_vgg": InputNormalization("bgr", (103.939, 116.779, 123.68)),
    # torchvision's ssd300_vgg16: image_mean (0.48235, 0.45882, 0.40784) and
    # image_std 1/255 on [0, 1] RGB input, i.e. pixels minus 255 * mean.
    "torchvision": InputNormalization(
        "rgb", tuple(round(255 * m, 5) for m in (0.48235, 0.45882, 0.40784))
    ),
    # ssd.pytorch (and the Caffe SSD's mean_value): BGR minus (104, 117, 123).
    "ssd.pytorch": InputNormalization("bgr", (104.0, 117.0, 123.0)),
}


def get_normalization(name_or_spec: str | InputNormalization | dict) -> InputNormalization:
    """The `InputNormalization` of a `NORMALIZATIONS` name, a spec or its config dict."""
    if isinstance(name_or_spec, InputNormalization):
        return name_or_spec
    if isinstance(name_or_spec, dict):
        return InputNormalization(
            name_or_spec["channel_order"],
            tuple(float(v) for v in name_or_spec["mean"]),
            tuple(float(v) for v in name_or_spec["std"]),
        )
    try:
        return NORMALIZATIONS[name_or_spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown input normalisation {name_or_spec!r}; available: "
            f"{sorted(NORMALIZATIONS)}."
        ) from None


def normalization_name(spec: InputNormalization) -> str:
    """The `NORMALIZATIONS` name of ``spec``, or its fields for one without a name."""
    for name, preset in NORMALIZATIONS.items():
        if preset == spec:
            return name
    return f"{spec.channel_order} mean {spec.mean} std {spec.std}"


@keras.saving.register_keras_serializable(package="keras_scb")
class L2Normalization(keras.layers.Layer):
    """Per-location L2 normalisation with a learnable per-channel scale (ParseNet).

    SSD applies it to conv4_3, whose activations are much larger than those of
    the deeper maps, with the scale initialised to 20.

    Input ``(B, H, W, C)``; output the same shape.
    """

    def __init__(self, scale_init: float = 20.0, epsilon: float = 1e-10, **kwargs):
        super().__init__(**kwargs)
        self.scale_init = scale_init
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.scale_init),
        )

    def call(self, x):
        # The sum of squares of hundreds of channels needs float32 under bfloat16.
        x32 = ops.cast(x, "float32")
        norm = ops.sqrt(ops.sum(ops.square(x32), axis=-1, keepdims=True) + self.epsilon)
        scale = ops.cast(self.scale, "float32")
        return ops.cast(x32 / norm * scale, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "scale_init": self.scale_init,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="keras_scb")
class CaffeImageNetNormalization(keras.layers.Layer):
    """RGB ``[0, 255]`` -> the network's input, as Caffe's data transform does.

    Channel order, mean subtraction and std of an `InputNormalization`; the
    default is keras's VGG16 one (BGR minus the ImageNet mean), which a
    ``.keras`` file written before the normalisation was configurable has.

    Args:
        normalization: a `NORMALIZATIONS` name, an `InputNormalization` or its
            config dict.

    Input and output ``(B, H, W, 3)``.
    """

    def __init__(self, normalization: str | InputNormalization | dict = "keras_vgg", **kwargs):
        super().__init__(**kwargs)
        self.normalization = get_normalization(normalization)

    def call(self, x):
        spec = self.normalization
        if spec.channel_order == "bgr":
            x = ops.flip(x, axis=-1)
        x = x - ops.convert_to_tensor(spec.mean, dtype=self.compute_dtype)
        if spec.std != (1.0, 1.0, 1.0):  # no extra op in the exports of the presets
            x = x / ops.convert_to_tensor(spec.std, dtype=self.compute_dtype)
        return x

    def get_config(self):
        return {
            **super().get_config(),
            "normalization": dataclasses.asdict(self.normalization),
        }


def input_normalization(model: keras.Model) -> InputNormalization | None:
    """The `InputNormalization` of ``model``'s `CaffeImageNetNormalization` layer,
    or None for a network without one (SSDLite rescales to ``[-1, 1]``)."""
    for layer in model.layers:
        if isinstance(layer, CaffeImageNetNormalization):
            return layer.normalization
    return None


@keras.saving.register_keras_serializable(package="keras_scb")
class AlignCornersResize(keras.layers.Layer):
    """Bilinear resize with aligned corners (PyTorch ``align_corners=True``).

    Corner pixels of input and output coincide: output row ``i`` samples input
    row ``i * (h - 1) / (H - 1)``. keras's ``Resizing`` samples half-pixel
    centres instead, which is not what FSSD's reference code does.

    Input ``(B, h, w, C)``; output ``(B, size, size, C)``.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    @staticmethod
    def _weights(source, target):
        """``(target, source)`` linear-interpolation matrix."""
        position = np.arange(target) * ((source - 1) / max(target - 1, 1))
        low = np.minimum(np.floor(position).astype(int), source - 1)
        high = np.minimum(low + 1, source - 1)
        frac = position - low
        matrix = np.zeros((target, source))
        matrix[np.arange(target), low] += 1 - frac
        matrix[np.arange(target), high] += frac
        return matrix

    def build(self, input_shape):
        self._rows = self._weights(input_shape[1], self.size)
        self._cols = self._weights(input_shape[2], self.size)

    def call(self, x):
        rows = ops.convert_to_tensor(self._rows, dtype=self.compute_dtype)
        cols = ops.convert_to_tensor(self._cols, dtype=self.compute_dtype)
        x = ops.einsum("ih,bhwc->biwc", rows, x)
        return ops.einsum("jw,biwc->bijc", cols, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}

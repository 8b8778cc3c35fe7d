"""Custom Keras layers of the detector networks (``keras.ops`` only)."""

import keras
import numpy as np
from keras import ops

# ImageNet channel means in BGR order, as the Caffe VGG16 (and keras's VGG16
# "imagenet" weights) expect.
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


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
    """RGB ``[0, 255]`` -> BGR minus the ImageNet mean (Caffe/keras VGG16 input).

    Input and output ``(B, H, W, 3)``.
    """

    def call(self, x):
        mean = ops.convert_to_tensor(_IMAGENET_BGR_MEAN, dtype=self.compute_dtype)
        return ops.flip(x, axis=-1) - mean


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

"""Custom Keras layers of the detector networks (``keras.ops`` only)."""

import keras
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

    def __init__(self, scale_init=20.0, epsilon=1e-10, **kwargs):
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

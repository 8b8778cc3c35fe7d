"""SSD's photometric distortion inside the train step, on the accelerator.

The input pipeline's augmentation (`keras_scb.data.augment`) is geometric and per
image (which pixels, where the boxes go) and photometric and per pixel (colour).
The per-pixel part is the host's largest remaining cost once the geometry is
lean, and a batch of it is a few elementwise ops on the accelerator. With
``training_pipeline(..., photometric="device")`` the host draws every image's
parameters from its seed (`augment.sample_photometric`, the same draws as the
host path) and the images come out undistorted; `photometric` applies them to
the batch with ``keras.ops`` (any backend, jittable), and `AugmentOnDevice` puts
that in front of a detector so that ``fit`` runs it in the compiled step.

The colour maps are those of the host path (`augment.apply_photometric`):
brightness shift, contrast before or after saturation and hue, all clipped to
``[0, 255]``; saturation and hue go through one HSV round trip here (the host's
``tf.image.adjust_saturation`` and ``adjust_hue`` make one each), so the pixels
agree up to float rounding (the tests bound it). The expand fill (output pixels
whose centre lies off the image, from the window in the parameters) stays the
mean colour. The models normalise their input themselves, so nothing more is
left to do here.

Parameters ``(B, 11)`` float32 per image: ``[brightness shift, contrast factor,
contrast first, saturation factor, saturation on, hue shift (fraction of the
circle), hue on, x0, y0, x1, y1]``, the last four the output window
(`augment.output_window`).
"""

from typing import Any, Sequence

import keras
from keras import ops

Tensor = Any
# The expand fill: the mean pixel (RGB, ImageNet), as the SSD authors do.
MEAN_RGB = (123.68, 116.78, 103.94)
# Per image: the photometric parameters, then the output window (module docstring).
PHOTOMETRIC_PARAMS = 7
NUM_PARAMS = PHOTOMETRIC_PARAMS + 4


def _rgb_to_hsv(rgb: Tensor):
    """``(..., 3)`` RGB in [0, 1] -> ``h, s, v`` ``(...)`` in [0, 1] (TF's definition)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = ops.maximum(ops.maximum(r, g), b)
    spread = value - ops.minimum(ops.minimum(r, g), b)
    saturation = ops.where(value > 0.0, spread / ops.maximum(value, 1e-12), 0.0)
    norm = 1.0 / (6.0 * ops.maximum(spread, 1e-12))
    hue = ops.where(
        r == value, norm * (g - b),
        ops.where(g == value, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0),
    )
    hue = ops.where(spread > 0.0, hue, 0.0)
    return ops.where(hue < 0.0, hue + 1.0, hue), saturation, value


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """The inverse of `_rgb_to_hsv`, without branches: channel ``n`` (5, 3, 1 for
    R, G, B) is ``v - v s clip(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``."""
    k = ops.mod(ops.convert_to_tensor([5.0, 3.0, 1.0]) + hue[..., None] * 6.0, 6.0)
    ramp = ops.clip(ops.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[..., None] - (value * saturation)[..., None] * ramp


def inside_window(window: Tensor, size: int) -> Tensor:
    """``(B, size, size, 1)`` bool: output pixel centres that lie on the image.

    Args:
        window: ``(B, 4)`` relative ``[x0, y0, x1, y1]`` of the image the output
            covers (`augment.output_window`).
    """
    centres = (ops.arange(size, dtype="float32") + 0.5) / size
    x = window[:, 0:1] + centres[None] * (window[:, 2:3] - window[:, 0:1])
    y = window[:, 1:2] + centres[None] * (window[:, 3:4] - window[:, 1:2])
    on_x = (x >= 0.0) & (x <= 1.0)
    on_y = (y >= 0.0) & (y <= 1.0)
    return (on_y[:, :, None] & on_x[:, None, :])[..., None]


def photometric(images: Tensor, params: Tensor) -> Tensor:
    """Applies each image's photometric distortion to a batch.

    Args:
        images: float ``(B, S, S, 3)`` RGB in ``[0, 255]``, undistorted
            (``training_pipeline(..., photometric="device")``).
        params: float32 ``(B, NUM_PARAMS)`` (see the module docstring).

    Returns:
        float32 ``(B, S, S, 3)`` in ``[0, 255]``.
    """
    images = ops.cast(images, "float32")
    params = ops.cast(params, "float32")
    if params.shape[-1] != NUM_PARAMS:
        raise ValueError(f"params must be (B, {NUM_PARAMS}); got shape {params.shape}.")

    def per_image(k):
        return params[:, k][:, None, None, None]

    def flag(k):
        return per_image(k) > 0.5

    contrast, contrast_first = per_image(1), flag(2)
    x = ops.clip(images + per_image(0), 0.0, 255.0)
    x = ops.where(contrast_first, ops.clip(x * contrast, 0.0, 255.0), x)
    unit = x / 255.0
    hue, saturation, value = _rgb_to_hsv(unit)
    saturate, rotate = flag(4)[..., 0], flag(6)[..., 0]
    saturation = ops.where(
        saturate, ops.clip(saturation * per_image(3)[..., 0], 0.0, 1.0), saturation
    )
    hue = ops.where(rotate, ops.mod(hue + per_image(5)[..., 0], 1.0), hue)
    # Without either change the pixels skip the round trip, as on the host.
    unit = ops.where((saturate | rotate)[..., None], _hsv_to_rgb(hue, saturation, value), unit)
    x = ops.clip(unit * 255.0, 0.0, 255.0)
    x = ops.where(contrast_first, x, ops.clip(x * contrast, 0.0, 255.0))
    inside = inside_window(params[:, 7:11], images.shape[1])
    return ops.where(inside, x, ops.convert_to_tensor(MEAN_RGB, "float32"))


class AugmentOnDevice(keras.Model):
    """A detector behind the device photometric distortion, for training.

    ``AugmentOnDevice(detector)((images, params))`` is
    ``detector(photometric(images, params))``; compile and ``fit`` it on the
    ``training_pipeline(..., photometric="device")`` batches. The weights are the
    detector's (shared), so checkpoints, evaluation and export take
    ``wrapper.detector`` as they would the detector trained on host-distorted
    images (the wrapper itself is not meant to be saved).

    Args:
        detector: the model to train, taking ``(B, S, S, 3)`` images.
    """

    def __init__(self, detector: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.detector = detector

    def call(self, inputs: Sequence[Tensor], training=None) -> Tensor:
        images, params = inputs
        return self.detector(photometric(images, params), training=training)

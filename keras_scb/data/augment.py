"""SSD training augmentation, as TensorFlow ops for ``tf.data.Dataset.map``.

The chain of the SSD paper (Liu et al. 2016, sec. 2.2 and 3.6): photometric
distortion, zoom out ("expand", 1..4x on a mean-colour canvas), a random crop
under a minimum-IoU constraint, horizontal flip, resize. The photometric step is
per pixel, so it runs on the resized output (often 3x fewer pixels than the
input), leaving the expand fill at the mean colour as when it runs first. Every random draw is a
stateless op keyed by a per-image seed, so a seeded pipeline is reproducible even
with a parallel map.

Expand, crop and resize are composed as windows in the image's relative
coordinates and applied to the pixels once, with one ``crop_and_resize`` at the
output size: the up-to-16x expand canvas is never built, which keeps the cost per
image about that of decoding it.

The crop honours its constraint: a crop is accepted when some ground-truth box
whose centre lies inside it overlaps it with IoU >= the drawn minimum (the SSD
authors' Caffe ``SatisfySampleConstraint`` accepts a crop if any box meets the
minimum). ssd.pytorch means to require the minimum but its test
``overlap.min() < min_iou and max_iou < overlap.max()`` is never true with
``max_iou = inf``, so every crop that keeps a box centre passes. The 50 tries are
drawn at once and the first acceptable one is taken (the same distribution as
trying them in turn); if none is acceptable the whole image is used.

keras-cv: its box algebra is correct but is not used here. ``RandomFlip`` draws
from a stateful ``tf.random.Generator`` (one per layer), which cannot be keyed by
a per-image seed, so a parallel map would not be reproducible; and it has no
expand or IoU-constrained crop. The only box formats here are relative corners
(the data) and the anchors' ``[cx, cy, w, h]``, which `keras_scb.matching`
converts; a flip is one line. The tests check the flip against keras-cv's
``RandomFlip`` and the COCO box conversion against ``bounding_box.convert_format``.

Channel swapping ("random light noise" in ssd.pytorch) is left out: it is not in
the SSD paper and makes colour a useless cue.

Host cost (``benchmarks/input_pipeline.py``): all draws come first
(`sample_augmentation`, from the boxes and the image size alone), so the pixels
are read once. `augment_jpeg` then decodes only the JPEG region the window reads
(`read_region`); `augment_pixels` can leave the colour to the accelerator
(`keras_scb.augment_on_device`) and returns the parameters it drew. `augment` is
the reference: its outputs are bit-identical to the code before these paths
(``tests/test_augment_paths.py`` keeps that code).
"""

import dataclasses
from typing import NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from keras_scb import matching
from keras_scb.augment_on_device import MEAN_RGB

WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Settings of `augment`; the defaults are the SSD paper's.

    Attributes:
        photometric: apply `photometric_distort`.
        expand_prob: probability of zooming out.
        max_expand: largest canvas side, as a multiple of the image side.
        min_ious: the crop modes, one drawn uniformly per image: ``None`` keeps the
            whole image, a number is the minimum IoU of the crop with a kept box
            (``0.0``: any crop that keeps a box centre).
        crop_trials: tries per image before falling back to the whole image.
        min_crop_scale: smallest crop side, relative to the (expanded) image side.
        max_crop_aspect: the crop's pixel ``h / w`` must lie in ``[1/a, a]``.
        flip_prob: probability of a horizontal flip.
    """

    photometric: bool = True
    expand_prob: float = 0.5
    max_expand: float = 4.0
    min_ious: Tuple[Optional[float], ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)
    crop_trials: int = 50
    min_crop_scale: float = 0.3
    max_crop_aspect: float = 2.0
    flip_prob: float = 0.5

    def __post_init__(self):
        # Checked here, not where the graph is traced, so that a bad setting fails at
        # once with its name; the train CLI turns these messages into flag errors.
        for name in ("expand_prob", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {getattr(self, name)}.")
        if not self.max_expand >= 1.0:
            raise ValueError(f"max_expand must be >= 1; got {self.max_expand}.")
        if not self.min_ious or any(m is not None and not 0.0 <= m <= 1.0 for m in self.min_ious):
            raise ValueError(f"min_ious must be None or lie in [0, 1]; got {self.min_ious}.")
        if self.crop_trials < 1:
            raise ValueError(f"crop_trials must be >= 1; got {self.crop_trials}.")
        if not 0.0 < self.min_crop_scale <= 1.0:
            raise ValueError(f"min_crop_scale must lie in (0, 1]; got {self.min_crop_scale}.")
        if not self.max_crop_aspect >= 1.0:
            raise ValueError(f"max_crop_aspect must be >= 1; got {self.max_crop_aspect}.")


def _split(seed, n):
    return tf.random.experimental.stateless_split(seed, n)


def _uniform(seed, shape=(), minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, seed, minval, maxval, tf.float32)


def sample_photometric(
    seed,
    brightness=32.0,
    contrast=(0.5, 1.5),
    saturation=(0.5, 1.5),
    hue=18.0,
):
    """The random draws of `photometric_distort`, as a float32 ``(7,)``
    (`keras_scb.augment_on_device.PHOTOMETRIC_PARAMS`):
    brightness shift, contrast factor (1 when off), contrast first (0/1), saturation
    factor, saturation on (0/1), hue shift (a fraction of the hue circle), hue on (0/1).

    Drawing them apart from the pixels lets the host draw them and the accelerator
    apply them (`keras_scb.augment_on_device.photometric`) with the same seeds.

    Args:
        seed: int ``(2,)``.
        brightness: largest shift, in pixel levels.
        contrast, saturation: ranges of the scale factors.
        hue: largest hue rotation, in degrees.
    """
    seeds = _split(seed, 5)
    coins = _uniform(seeds[0], [5]) < 0.5
    delta = tf.where(coins[0], _uniform(seeds[1], (), -brightness, brightness), 0.0)
    contrast_factor = tf.where(coins[1], _uniform(seeds[2], (), *contrast), 1.0)
    factor = _uniform(seeds[3], (), *saturation)
    shift = _uniform(seeds[4], (), -hue / 360.0, hue / 360.0)
    flags = tf.cast(coins, tf.float32)
    return tf.stack([delta, contrast_factor, flags[4], factor, flags[2], shift, flags[3]])


def apply_photometric(image, params):
    """SSD's photometric distortion of one image with drawn ``params``.

    Brightness shift, then contrast either first or last around saturation and hue
    changes (in HSV), as in the SSD authors' code. Contrast scales pixel values
    (not around the mean), as they do.

    Args:
        image: float32 ``(H, W, 3)`` RGB in ``[0, 255]``.
        params: float32 ``(7,)`` from `sample_photometric`.

    Returns:
        float32 ``(H, W, 3)`` in ``[0, 255]``.
    """
    delta, contrast_factor, contrast_first, factor, saturate, shift, rotate = tf.unstack(params)
    contrast_first = contrast_first > 0.5
    image = tf.clip_by_value(image + delta, 0.0, 255.0)

    def scale_contrast(x):
        return tf.clip_by_value(x * contrast_factor, 0.0, 255.0)

    image = tf.cond(contrast_first, lambda: scale_contrast(image), lambda: image)
    unit = image / 255.0  # the HSV ops expect [0, 1]
    unit = tf.cond(saturate > 0.5, lambda: tf.image.adjust_saturation(unit, factor), lambda: unit)
    unit = tf.cond(rotate > 0.5, lambda: tf.image.adjust_hue(unit, shift), lambda: unit)
    image = tf.clip_by_value(unit * 255.0, 0.0, 255.0)
    return tf.cond(contrast_first, lambda: image, lambda: scale_contrast(image))


def photometric_distort(image, seed, **ranges):
    """SSD's photometric distortion, each step with probability 1/2.

    ``apply_photometric(image, sample_photometric(seed, **ranges))``; see those.
    """
    return apply_photometric(image, sample_photometric(seed, **ranges))


def to_window(boxes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """Re-expresses relative corners ``(N, 4)`` in the frame of ``window`` ``(4,)``."""
    origin = tf.tile(window[:2], [2])
    size = tf.tile(window[2:] - window[:2], [2])
    return (boxes - origin) / size


def compose(outer: tf.Tensor, inner: tf.Tensor) -> tf.Tensor:
    """The window ``inner`` (relative to ``outer``) in ``outer``'s own frame."""
    origin = tf.tile(outer[:2], [2])
    size = tf.tile(outer[2:] - outer[:2], [2])
    return origin + inner * size


def sample_expand(seed: tf.Tensor, prob: float = 0.5, max_expand: float = 4.0) -> tf.Tensor:
    """Draws the zoom-out canvas.

    Returns:
        float32 ``(4,)``: the canvas as a window in the image's relative
        coordinates, ``[-left, -top, ratio - left, ratio - top]`` with
        ``ratio ~ U(1, max_expand)`` (1 with probability ``1 - prob``) and the
        image's offsets ``left, top ~ U(0, ratio - 1)``.
    """
    seeds = _split(seed, 3)
    ratio = tf.where(_uniform(seeds[0]) < prob, _uniform(seeds[1], (), 1.0, max_expand), 1.0)
    offset = _uniform(seeds[2], [2]) * (ratio - 1.0)
    return tf.concat([-offset, ratio - offset], axis=0)


def box_centres_inside(boxes: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
    """``(N, T)`` bool: box centre strictly inside each window ``(T, 4)``."""
    centres = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2.0
    return tf.reduce_all(
        (centres > windows[None, :, :2]) & (centres < windows[None, :, 2:]), axis=-1
    )


def sample_crop_window(
    boxes: tf.Tensor,
    aspect: tf.Tensor,
    seed: tf.Tensor,
    min_ious: Sequence[Optional[float]] = AugmentConfig.min_ious,
    trials: int = 50,
    min_scale: float = 0.3,
    max_aspect: float = 2.0,
) -> tf.Tensor:
    """Draws an IoU-constrained crop (see the module docstring).

    Args:
        boxes: float32 ``(N, 4)`` relative corners (N may be 0: any crop of a valid
            shape is then accepted).
        aspect: scalar ``height / width`` of the frame in pixels, so that the
            crop's shape limit is on pixels.
        seed: int ``(2,)``.
        min_ious, trials, min_scale, max_aspect: as in `AugmentConfig`.

    Returns:
        float32 ``(4,)`` relative window ``[xmin, ymin, xmax, ymax]``; `WHOLE_IMAGE`
        for the ``None`` mode or when no try is acceptable.
    """
    seeds = _split(seed, 3)
    modes = tf.constant([-1.0 if m is None else float(m) for m in min_ious])
    min_iou = modes[tf.random.stateless_uniform([], seeds[0], 0, len(min_ious), tf.int32)]
    size = _uniform(seeds[1], [trials, 2], min_scale, 1.0)  # (T, [w, h])
    corner = _uniform(seeds[2], [trials, 2]) * (1.0 - size)
    windows = tf.concat([corner, corner + size], axis=-1)
    pixel_aspect = size[:, 1] / size[:, 0] * tf.cast(aspect, tf.float32)
    ok = (pixel_aspect >= 1.0 / max_aspect) & (pixel_aspect <= max_aspect)
    meets = box_centres_inside(boxes, windows) & (matching.iou(boxes, windows) >= min_iou)
    ok &= tf.reduce_any(meets, axis=0) | (tf.shape(boxes)[0] == 0)
    found = tf.reduce_any(ok) & (min_iou >= 0.0)
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    return tf.where(found, windows[first], tf.constant(WHOLE_IMAGE))


def crop_boxes(boxes: tf.Tensor, classes: tf.Tensor,
               window: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Keeps the boxes whose centre is inside ``window``, in its frame, clipped.

    Args:
        boxes: ``(N, 4)`` relative corners. classes: ``(N,)``. window: ``(4,)``.

    Returns:
        ``(boxes (M, 4) in [0, 1], classes (M,))``.
    """
    keep = box_centres_inside(boxes, window[None])[:, 0]
    kept = tf.clip_by_value(to_window(tf.boolean_mask(boxes, keep), window), 0.0, 1.0)
    return kept, tf.boolean_mask(classes, keep)


def flip_boxes(boxes):
    """Mirrors ``(N, 4)`` relative corners left-right."""
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([1.0 - x1, y0, 1.0 - x0, y1], axis=-1)



def _add_row(image, values):
    """``image (H, W, C) + values (C,)``, broadcast over a whole row at a time.

    The same sums as ``image + values``; TensorFlow's CPU kernel for a 3-wide
    broadcast is about 2.5x slower than for one as wide as an image row.
    """
    shape = tf.shape(image)
    rows = tf.reshape(tf.cast(image, tf.float32), [shape[0], -1])
    return tf.reshape(rows + tf.tile(values, [shape[1]]), shape)


def _pad_edges(image):
    """``(H, W, C)`` -> ``(H + 2, W + 2, C)`` with the edge rows and columns repeated.

    ``tf.pad(image, ..., mode="SYMMETRIC")`` by one pixel, as two concatenations:
    TensorFlow's mirror-pad kernel is several times slower, most of all on uint8.
    """
    image = tf.concat([image[:1], image, image[-1:]], axis=0)
    return tf.concat([image[:, :1], image, image[:, -1:]], axis=1)


def resize_window(image: tf.Tensor, window: tf.Tensor, size: int,
                  fill: Sequence[float] = MEAN_RGB) -> tf.Tensor:
    """Bilinear resample of a window of an image to ``size x size``.

    Sampling is half-pixel centred (like ``tf.image.resize``): output pixel ``i``
    reads the input at relative ``y0 + (i + 0.5) (y1 - y0) / size``. Where the
    window reaches outside the image the output is ``fill``.

    Args:
        image: ``(H, W, 3)``, uint8 or float32.
        window: ``(4,)`` relative ``[xmin, ymin, xmax, ymax]``, may exceed [0, 1].
        size: output side.

    Returns:
        float32 ``(size, size, 3)``.
    """
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    lo = tf.stack([window[1], window[0]])  # (y, x)
    span = tf.stack([window[3] - window[1], window[2] - window[0]])
    # A one-pixel edge border makes reads in the image's outer half pixel take
    # the edge value rather than the fill (they are inside the image). The
    # border goes on before the cast: a quarter of the bytes to move for uint8.
    mean = tf.constant(fill, tf.float32)
    padded = _add_row(_pad_edges(image), -mean)
    # crop_and_resize reads row i at y1 (P - 1) + i (y2 - y1) (P - 1) / (size - 1)
    # (P = H + 2 padded rows); pick y1, y2 so that this is the half-pixel position
    # (lo + (i + 0.5) span / size) H - 0.5, plus 1 for the border.
    last = hw + 1.0
    start = ((lo + 0.5 * span / size) * hw + 0.5) / last
    end = start + span * hw * (size - 1) / (size * last)
    out = tf.image.crop_and_resize(
        padded[None], tf.concat([start, end], 0)[None], [0], [size, size],
        extrapolation_value=0.0,
    )
    # A plain broadcast add (not `_add_row`): TensorFlow's graph optimiser folds it
    # with the photometric brightness shift that follows (out + (mean + delta)),
    # and the colours stay bit-identical to the code before `_add_row` existed.
    return out[0] + mean


def _inside_image(window, size):
    """``(size, size, 1)`` bool: output pixel centres of `resize_window` on the image."""
    centres = (tf.range(size, dtype=tf.float32) + 0.5) / size
    x = window[0] + centres * (window[2] - window[0])
    y = window[1] + centres * (window[3] - window[1])
    inside_x = (x >= 0.0) & (x <= 1.0)
    inside_y = (y >= 0.0) & (y <= 1.0)
    return (inside_y[:, None] & inside_x[None, :])[..., None]


def output_window(window, flip):
    """The window as the output's pixels see it: mirrored (``[1 - x1, y0, 1 - x0, y1]``)
    when the output is flipped, so that output column ``j`` reads the (mirrored)
    image at ``x0 + (j + 0.5) (x1 - x0) / size``."""
    mirrored = tf.stack([1.0 - window[2], window[1], 1.0 - window[0], window[3]])
    return tf.where(flip, mirrored, window)


class Draws(NamedTuple):
    """The random draws of `augment` for one image, made before any pixel is read.

    Attributes:
        window: float32 ``(4,)`` relative ``[xmin, ymin, xmax, ymax]`` of the
            image that the output covers (before the flip), may exceed [0, 1].
        boxes: float32 ``(M, 4)`` the kept boxes in the output's frame (flipped).
        classes: ``(M,)`` their classes.
        flip: bool scalar.
        photometric: float32 ``(7,)`` (`sample_photometric`).
    """

    window: tf.Tensor
    boxes: tf.Tensor
    classes: tf.Tensor
    flip: tf.Tensor
    photometric: tf.Tensor


def sample_augmentation(boxes, classes, image_hw, seed, config=AugmentConfig()):
    """Draws the expand canvas, the crop, the flip and the colour parameters.

    Args:
        boxes: float32 ``(N, 4)`` relative corners. classes: ``(N,)``.
        image_hw: ``(2,)`` the image's height and width in pixels.
        seed: int ``(2,)``.
        config: `AugmentConfig`.

    Returns:
        `Draws`.
    """
    seeds = _split(seed, 4)
    hw = tf.cast(image_hw, tf.float32)
    canvas = sample_expand(seeds[1], config.expand_prob, config.max_expand)
    boxes = to_window(boxes, canvas)
    crop = sample_crop_window(
        boxes, hw[0] / hw[1], seeds[2], config.min_ious, config.crop_trials,
        config.min_crop_scale, config.max_crop_aspect,
    )
    boxes, classes = crop_boxes(boxes, classes, crop)
    flip = _uniform(seeds[3]) < config.flip_prob
    boxes = tf.cond(flip, lambda: flip_boxes(boxes), lambda: boxes)
    return Draws(compose(canvas, crop), boxes, classes, flip, sample_photometric(seeds[0]))


def read_region(window, image_hw, size):
    """The pixels `resize_window` reads for ``window``, with a margin.

    Returns:
        ``(region, local)``: int32 ``(4,)`` ``[top, left, height, width]`` in pixels
        (at least one pixel, inside the image), and the window relative to that
        region, for ``resize_window(image[region], local, size)``.
    """
    hw = tf.cast(image_hw, tf.float32)
    lo = tf.stack([window[1], window[0]]) * hw  # (y, x) pixel edges
    hi = tf.stack([window[3], window[2]]) * hw
    # Reads lie within half a pixel of the window; two pixels of margin keep
    # them off the region's edge (resize_window repeats the edge there).
    first = tf.clip_by_value(tf.floor(lo) - 2.0, 0.0, hw - 1.0)
    end = tf.clip_by_value(tf.math.ceil(hi) + 2.0, first + 1.0, hw)
    extent = end - first
    local_lo = (lo - first) / extent
    local_hi = (hi - first) / extent
    local = tf.stack([local_lo[1], local_lo[0], local_hi[1], local_hi[0]])
    return tf.cast(tf.concat([first, extent], 0), tf.int32), local


def _finish(pixels, window, draws, size, config, photometric_on_host):
    """Resizes, recolours (on the host) and flips; see `augment_pixels`."""
    image = resize_window(pixels, window, size)
    if config.photometric and photometric_on_host:
        # The colour maps are per pixel, so they go after the resize, on the
        # output's pixels rather than the (larger) input's; the fill stays the mean.
        distorted = apply_photometric(image, draws.photometric)
        inside = tf.reduce_all(draws.window[:2] >= 0.0) & tf.reduce_all(draws.window[2:] <= 1.0)
        image = tf.cond(
            inside,  # no fill to keep (the common case; tf.where costs ~1 ms on one core)
            lambda: distorted,
            lambda: tf.where(_inside_image(draws.window, size), distorted, tf.constant(MEAN_RGB)),
        )
    image = tf.cond(draws.flip, lambda: tf.reverse(image, [1]), lambda: image)
    params = tf.concat([draws.photometric, output_window(draws.window, draws.flip)], 0)
    return image, draws.boxes, draws.classes, params


def augment_pixels(image, boxes, classes, seed, size, config=AugmentConfig(),
                   photometric_on_host=True):
    """`augment`, also returning the colour parameters, optionally left unapplied.

    Args:
        image, boxes, classes, seed, size, config: as `augment`.
        photometric_on_host: apply the photometric distortion here; False leaves
            it to `keras_scb.augment_on_device.photometric` with the returned
            parameters.

    Returns:
        ``(image, boxes, classes, params)``: as `augment`, and float32 ``(11,)``
        (`keras_scb.augment_on_device.NUM_PARAMS`): `sample_photometric`'s
        parameters, then the `output_window`.
    """
    draws = sample_augmentation(boxes, classes, tf.shape(image)[:2], seed, config)
    return _finish(image, draws.window, draws, size, config, photometric_on_host)


def augment_jpeg(data, boxes, classes, seed, size, config=AugmentConfig(),
                 photometric_on_host=True):
    """`augment_pixels` of a JPEG, decoding only the pixels the window needs.

    The draws need only the image's size (read from the JPEG header), so the crop
    is known before decoding and ``tf.image.decode_and_crop_jpeg`` decodes only it
    (the same pixels as a full decode, then a slice). Boxes, classes and
    parameters equal `augment_pixels`' for the same seed; the pixels differ only
    by rounding (the resample's positions are computed in the region's frame).

    Args:
        data: scalar string, a JPEG.
        boxes, classes, seed, size, config, photometric_on_host: as `augment_pixels`.
    """
    image_hw = tf.image.extract_jpeg_shape(data)[:2]
    draws = sample_augmentation(boxes, classes, image_hw, seed, config)
    region, local = read_region(draws.window, image_hw, size)
    pixels = tf.image.decode_and_crop_jpeg(data, region, channels=3)
    return _finish(pixels, local, draws, size, config, photometric_on_host)


def augment(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, seed: tf.Tensor, size: int,
            config: AugmentConfig = AugmentConfig()) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The full SSD training augmentation of one image.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in ``[0, 255]``.
        boxes: float32 ``(N, 4)`` relative corners. classes: ``(N,)``.
        seed: int ``(2,)``.
        size: output side in pixels.
        config: `AugmentConfig`.

    Returns:
        ``(image float32 (size, size, 3) in [0, 255], boxes (M, 4) in [0, 1],
        classes (M,))``: the boxes whose centre survives the crop.
    """
    return augment_pixels(image, boxes, classes, seed, size, config)[:3]

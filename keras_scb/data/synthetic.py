"""Deterministic synthetic detection data: flat-coloured shapes at controlled scales.

Each image is a smooth random background with non-overlapping rectangles, ellipses
and triangles (class = shape). Object size ``sqrt(w * h)`` is drawn log-uniformly
from ``size_range`` pixels, so the default ``(8, 128)`` puts half the objects under
32x32 px. Boxes are the tight extent of the drawn pixels. Image ``i`` depends only
on ``(seed, i)``, so a dataset is a prefix of any larger one with the same settings.
Export to COCO with `keras_scb.data.coco.write_coco`.

For the small-object testbed of the SCB experiment (issue 15), ``small_fraction``
sets the probability that an object's box is under ``32^2`` px *at the network
input* (the image resized to ``input_size``), and ``clutter`` adds distractors:
plus-shaped crosses, which are not objects and have no box, so a detector must
learn to leave them out. Synthetic data tests the mechanism (does the loss help
when small objects are the majority?), not the paper's numbers.
"""

import math
from typing import Optional, Tuple

import numpy as np

from keras_scb.data import records as records_lib

SHAPES = ("rectangle", "ellipse", "triangle")


def _shape_mask(shape, h, w):
    """Bool ``(h, w)`` mask of the shape inscribed in an ``h x w`` pixel box."""
    y = (np.arange(h) + 0.5)[:, None] / h  # pixel centres in [0, 1]
    x = (np.arange(w) + 0.5)[None, :] / w
    if shape == "rectangle":
        return np.ones((h, w), bool)
    if shape == "ellipse":
        return (2 * x - 1) ** 2 + (2 * y - 1) ** 2 <= 1.0
    # Apex at the top centre, base along the bottom edge.
    return (y >= 2 * np.abs(x - 0.5)) & (y <= 1.0)


def _background(rng, height, width):
    corners = rng.uniform(40, 215, size=(2, 2, 3))
    ty = np.linspace(0, 1, height)[:, None, None]
    tx = np.linspace(0, 1, width)[None, :, None]
    top = corners[0, 0] * (1 - tx) + corners[0, 1] * tx
    bottom = corners[1, 0] * (1 - tx) + corners[1, 1] * tx
    image = top * (1 - ty) + bottom * ty
    return image + rng.normal(0, 6, size=(height, width, 3))


def _place(rng, taken, h, w, height, width, gap, tries=30):
    """Top-left corner of an ``h x w`` box clear of ``taken`` by ``gap`` px, or None."""
    for _ in range(tries):
        y0 = int(rng.integers(0, height - h + 1))
        x0 = int(rng.integers(0, width - w + 1))
        if all(
            x0 >= b[2] + gap or b[0] >= x0 + w + gap or y0 >= b[3] + gap or b[1] >= y0 + h + gap
            for b in taken
        ):
            return y0, x0
    return None


def _cross_mask(h, w):
    """Bool ``(h, w)`` plus sign with arms a third of the box wide: a distractor."""
    y = (np.arange(h) + 0.5)[:, None] / h
    x = (np.arange(w) + 0.5)[None, :] / w
    return (np.abs(x - 0.5) <= 1 / 6) | (np.abs(y - 0.5) <= 1 / 6)


def _box_side(rng, size_range, aspect_range, height, width):
    size = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
    aspect = math.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))
    h = int(np.clip(round(size / math.sqrt(aspect)), 2, height))
    w = int(np.clip(round(size * math.sqrt(aspect)), 2, width))
    return h, w


def _paint(rng, image, mask, y0, x0):
    h, w = mask.shape
    colour = rng.uniform(0, 255, size=3)
    # Keep the shape visible against the local background.
    local = image[y0:y0 + h, x0:x0 + w].mean(axis=(0, 1))
    if np.abs(colour - local).max() < 80:
        colour = np.where(local > 127, local - 110, local + 110)
    image[y0:y0 + h, x0:x0 + w][mask] = colour


def _image(rng, height, width, size_range, aspect_range, objects_range,
           small_fraction=None, small_side=32.0, clutter=(0, 0)):
    """One image. With ``small_fraction``, each object is small (box area under
    ``small_side^2`` image pixels) with that probability: its size is drawn from
    the part of ``size_range`` on its side of ``small_side``, and a box whose
    drawn area lands on the other side (rounding, aspect) is drawn again."""
    image = _background(rng, height, width)
    boxes, classes = [], []
    for _ in range(int(rng.integers(objects_range[0], objects_range[1] + 1))):
        if small_fraction is None:
            h, w = _box_side(rng, size_range, aspect_range, height, width)
        else:
            small = bool(rng.random() < small_fraction)
            sizes = ((size_range[0], min(small_side, size_range[1])) if small
                     else (max(small_side, size_range[0]), size_range[1]))
            for _ in range(20):
                h, w = _box_side(rng, sizes, aspect_range, height, width)
                if (h * w < small_side**2) == small:
                    break
        corner = _place(rng, boxes, h, w, height, width, gap=2)
        if corner is None:
            continue
        y0, x0 = corner
        cls = int(rng.integers(len(SHAPES)))
        mask = _shape_mask(SHAPES[cls], h, w)
        _paint(rng, image, mask, y0, x0)
        rows, cols = np.nonzero(mask)
        boxes.append([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1])
        classes.append(cls)
    taken = list(boxes)
    for _ in range(int(rng.integers(clutter[0], clutter[1] + 1)) if clutter[1] else 0):
        h, w = _box_side(rng, size_range, aspect_range, height, width)
        corner = _place(rng, taken, h, w, height, width, gap=2)
        if corner is None:
            continue
        y0, x0 = corner
        _paint(rng, image, _cross_mask(h, w), y0, x0)
        taken.append([x0, y0, x0 + w, y0 + h])
    return np.clip(np.round(image), 0, 255).astype(np.uint8), boxes, classes


def make_synthetic(
    num_images: int,
    *,
    image_size: Tuple[int, int] = (300, 300),
    size_range: Tuple[float, float] = (8, 128),
    aspect_range: Tuple[float, float] = (0.5, 2.0),
    objects_per_image: Tuple[int, int] = (1, 12),
    seed: int = 0,
    jpeg_quality: int = 95,
    small_fraction: Optional[float] = None,
    input_size: Optional[int] = None,
    clutter: Tuple[int, int] = (0, 0),
) -> records_lib.Dataset:
    """Generates ``num_images`` JPEG images (kept as bytes in the records).

    Args:
        num_images: how many images.
        image_size: ``(height, width)`` in pixels.
        size_range: ``(min, max)`` object size ``sqrt(w * h)`` in pixels.
        aspect_range: ``(min, max)`` of ``w / h``, drawn log-uniformly.
        objects_per_image: ``(min, max)`` objects attempted; an object that finds
            no free place in 30 tries is left out, so crowded settings give fewer.
        seed: the generator's seed.
        jpeg_quality: 1..100.
        small_fraction: if set, the probability in ``[0, 1]`` that an object's
            box is under ``32^2`` px at the network input (else sizes follow
            ``size_range`` alone). Crowded images drop objects that find no
            place, large ones more often, so the realised fraction is a little
            higher than asked; `small_object_fraction` measures it.
        input_size: the network's square input side for ``small_fraction``;
            default: the image is the input (``32^2`` image pixels).
        clutter: ``(min, max)`` distractor crosses per image (not objects).

    Returns:
        `Dataset` with classes `SHAPES`, ``image_id`` = index, names
        ``synthetic_<index>.jpg``.
    """
    import tensorflow as tf

    height, width = image_size
    if small_fraction is not None and not 0.0 <= small_fraction <= 1.0:
        raise ValueError(f"small_fraction must be in [0, 1]; got {small_fraction}.")
    if not 0 <= clutter[0] <= clutter[1]:
        raise ValueError(f"clutter must be (min, max) with 0 <= min <= max; got {clutter}.")
    # 32 px at the input is 32 * sqrt(H W) / S px in the image (area scales by S^2 / (H W)).
    small_side = 32.0 if input_size is None else 32.0 * math.sqrt(height * width) / input_size
    records = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        pixels, boxes, classes = _image(
            rng, height, width, size_range, aspect_range, objects_per_image,
            small_fraction, small_side, clutter,
        )
        encoded = tf.io.encode_jpeg(pixels, quality=jpeg_quality).numpy()
        relative = np.asarray(boxes, np.float64).reshape(-1, 4) / [width, height, width, height]
        records.append(
            records_lib.make_record(
                encoded, index, f"synthetic_{index:06d}.jpg", height, width,
                relative, classes, np.zeros(len(classes), bool),
            )
        )
    return records_lib.Dataset(records, SHAPES)


def small_object_fraction(dataset: records_lib.Dataset, input_size: int) -> float:
    """Fraction of the objects whose box is under ``32^2`` px once the image is
    resized to ``input_size x input_size`` (what the anchors see)."""
    small = total = 0
    for record in dataset.records:
        areas = ((record.boxes[:, 2] - record.boxes[:, 0])
                 * (record.boxes[:, 3] - record.boxes[:, 1]) * input_size**2)
        small += int(np.count_nonzero(areas < 32.0**2))
        total += len(areas)
    return small / total if total else float("nan")

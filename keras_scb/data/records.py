"""The in-memory record format that every data source produces.

A `Dataset` is a list of `Record` (one per image) plus the class names. Boxes are
relative corners ``[xmin, ymin, xmax, ymax]`` in continuous image coordinates: the
image spans ``[0, 1] x [0, 1]`` and a box covering pixel columns ``a..b`` (0-based,
inclusive) is ``[a / W, ., (b + 1) / W, .]``. So VOC's 1-based inclusive pixel
boxes ``(x1, y1, x2, y2)`` become ``((x1 - 1) / W, (y1 - 1) / H, x2 / W, y2 / H)``
and a box's pixel area is ``(x2 - x1 + 1) (y2 - y1 + 1)`` as in the VOC devkit;
COCO's ``[x, y, w, h]`` becomes ``(x / W, y / H, (x + w) / W, (y + h) / H)``.

Bad input (`BadInputError` names the file) is reported through an `IssueLog`:
each reader takes ``bad_files`` (missing, corrupt, truncated or undecodable image,
malformed annotation file) and ``bad_objects`` (unknown class, zero or negative
area, non-finite or malformed box), each ``"raise"`` (default) or ``"skip"``. A
skipped file drops its image; a skipped object drops that box. Finite boxes
reaching outside the image are clipped, never an error. Every skip and clip is
counted in `Dataset.issues`, logged once per kind, and `format_issues` words the
counts for the end of a command-line run.

Images are decoded by content, not by file name: JPEG, PNG (8 or 16 bit, 16 bit
reduced to its high byte), GIF (first frame), BMP and WebP, always as 3-channel
8-bit RGB.
"""

import collections
import dataclasses
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from absl import logging

POLICIES = ("raise", "skip")
# The largest image side the pipeline's int32 sizes hold; a larger "size" is a
# broken annotation (and would turn a box of a few pixels into a zero-size one).
MAX_IMAGE_SIDE = 2**31 - 1


class BadInputError(ValueError):
    """An input file that cannot be used; the message starts with its path."""


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One image and its ground truth.

    Attributes:
        image: path of the image file (str), or the encoded image itself (bytes);
            any format `decode_image` reads.
        image_id: int; the COCO image id for COCO, else the index in the dataset.
        name: the image's name in its source (VOC id such as ``"BloodImage_00001"``,
            COCO ``file_name``).
        height, width: the original image size in pixels.
        boxes: float32 ``(N, 4)`` relative ``[xmin, ymin, xmax, ymax]`` in ``[0, 1]``.
        classes: int32 ``(N,)`` ids ``0..C-1`` into `Dataset.class_names`.
        difficult: bool ``(N,)``: VOC ``difficult`` or COCO ``iscrowd``. Such boxes
            are left out of training targets and out of evaluation denominators
            (a detection on one is neither a true nor a false positive).
        areas: float64 ``(N,)`` object areas in original-image pixels, for the
            evaluation's size bins: COCO's annotation ``area`` (the
            segmentation's) where the source has one, else the box's pixel area
            (`keras_scb.matching.pixel_box_areas`; VOC: the devkit's count).
    """

    image: Union[str, bytes]
    image_id: int
    name: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray
    areas: np.ndarray


@dataclasses.dataclass(eq=False)
class Dataset:
    """Records plus the label space.

    Attributes:
        records: one `Record` per image, in source order.
        class_names: name of each class id.
        category_ids: COCO category id of each class id (``None`` outside COCO);
            ``category_ids[k]`` is the id to write in COCO results for class ``k``.
        issues: count of each kind of skipped or clipped input.
    """

    records: List[Record]
    class_names: Tuple[str, ...]
    category_ids: Optional[Tuple[int, ...]] = None
    issues: Dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self):
        return len(self.records)

    def num_boxes(self) -> int:
        return sum(len(r.classes) for r in self.records)

    def max_boxes(self) -> int:
        """The most boxes on one image (at least 1, so padded shapes are never empty)."""
        return max([1] + [len(r.classes) for r in self.records])

    def class_counts(self) -> Dict[str, int]:
        counts = collections.Counter()
        for r in self.records:
            counts.update(r.classes.tolist())
        return {name: counts[k] for k, name in enumerate(self.class_names)}


def make_record(
    image, image_id, name, height, width, boxes, classes, difficult, areas=None
):
    """Builds a `Record`, converting the arrays to their documented dtypes and
    shapes; ``areas`` default to the boxes' pixel areas."""
    from keras_scb.matching import pixel_box_areas

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if areas is None:
        areas = pixel_box_areas(boxes, height, width)
    return Record(
        image=image,
        image_id=int(image_id),
        name=str(name),
        height=int(height),
        width=int(width),
        boxes=boxes,
        classes=np.asarray(classes, np.int32).reshape(-1),
        difficult=np.asarray(difficult, bool).reshape(-1),
        areas=np.asarray(areas, np.float64).reshape(-1),
    )


class IssueLog:
    """Raises on, or counts, the bad input a reader meets."""

    def __init__(self, bad_files="raise", bad_objects="raise"):
        for flag, value in (("bad_files", bad_files), ("bad_objects", bad_objects)):
            if value not in POLICIES:
                raise ValueError(f"{flag} must be one of {POLICIES}; got {value!r}.")
        self._policy = {"file": bad_files, "object": bad_objects}
        self.counts = collections.Counter()

    def bad_file(self, path, kind, detail=""):
        """A file that cannot be used; the caller drops its image when this returns."""
        self._report("file", path, kind, detail)

    def bad_object(self, path, kind, detail=""):
        """A box that cannot be used; the caller drops it when this returns."""
        self._report("object", path, kind, detail)

    def clipped(self, path, count):
        if count:
            self._count(path, "clipped box", count, "box reaches outside the image")

    def _report(self, level, path, kind, detail):
        message = f"{path}: {kind}" + (f": {detail}" if detail else "")
        if self._policy[level] == "raise":
            flag = "bad_files" if level == "file" else "bad_objects"
            raise BadInputError(
                f"{message} (to skip and count these: --bad_input=skip for train/"
                f"evaluate, --{flag}=skip for keras_scb.data.convert, {flag}='skip' in Python)"
            )
        self._count(path, kind, 1, detail)

    def _count(self, path, kind, count, detail):
        if not self.counts[kind]:
            logging.warning("%s: %s (%s); further ones are only counted.", path, kind, detail)
        self.counts[kind] += count


def image_size_problem(height: int, width: int) -> Optional[str]:
    """Why ``height x width`` cannot be an image's size, or ``None``."""
    if 0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE:
        return None
    return f"image size {height}x{width} (HxW) is not in 1..{MAX_IMAGE_SIDE}"


def format_issues(issues: Dict[str, int]) -> str:
    """``Dataset.issues`` as one line, e.g.
    ``"skipped or clipped input: 1 clipped box, 2 missing image"``."""
    if not issues:
        return "no input was skipped or clipped"
    counts = ", ".join(f"{count} {kind}" for kind, count in sorted(issues.items()))
    return f"skipped or clipped input: {counts}"


def pixel_boxes_to_relative(path, boxes, height, width, issues):
    """Clips continuous pixel corners to the image and makes them relative.

    Args:
        path: the annotation file, for messages.
        boxes: float ``(N, 4)`` ``[xmin, ymin, xmax, ymax]`` in continuous pixels.
        height, width: image size.
        issues: `IssueLog`.

    Returns:
        ``(relative (M, 4) float32, keep (N,) bool)``: boxes with a non-finite
        corner (never clipped: ``inf`` is a broken annotation, not a box reaching
        outside the image) or with zero or negative area (before or after
        clipping) are reported as bad objects and dropped.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    size = np.array([width, height, width, height], np.float64)
    clipped = np.clip(boxes, 0.0, size)
    keep = np.ones(len(boxes), bool)
    for i, (box, clip) in enumerate(zip(boxes, clipped)):
        if not np.isfinite(box).all():
            issues.bad_object(path, "non-finite box", f"{box.tolist()}")
            keep[i] = False
        elif not (box[2] > box[0] and box[3] > box[1]):
            issues.bad_object(path, "zero or negative area box", f"{box.tolist()}")
            keep[i] = False
        elif not (clip[2] > clip[0] and clip[3] > clip[1]):
            issues.bad_object(path, "box outside the image", f"{box.tolist()}")
            keep[i] = False
    issues.clipped(path, int(np.sum(np.any(clipped != boxes, axis=1) & keep)))
    return (clipped[keep] / size).astype(np.float32), keep


def op_error(error: Any) -> str:
    """The useful part of a TF op error: no function-node prefix, no op suffix."""
    text = error.message.splitlines()[0]
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\].*$", "", text)


# The file extensions of the formats `decode_image` reads, compared lower-cased
# (`is_image_file`): folders of images are listed by them.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def is_image_file(name: str) -> bool:
    """Whether the file name ``name`` has an `IMAGE_EXTENSIONS` extension (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


# Leading bytes of the formats `decode_image` reads, for messages that say what a
# file really is (a PNG named .jpg is fine; random bytes are not an image).
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)


def image_format(data: bytes) -> Optional[str]:
    """The format named by the first bytes of an encoded image, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def decode_image(data: Any) -> Any:
    """Encoded image (a scalar string tensor) -> ``(H, W, 3)`` uint8 RGB.

    The format comes from the content; 16-bit PNGs keep their high byte and GIFs
    their first frame.
    """
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def read_image(path: str) -> np.ndarray:
    """The image file ``path`` as uint8 ``(H, W, 3)`` RGB (`decode_image`).

    Raises:
        ValueError: naming ``path``, if it cannot be read or decoded (truncated,
            not an image).
    """
    import tensorflow as tf

    try:
        return decode_image(tf.io.read_file(path)).numpy()
    except tf.errors.OpError as error:
        raise ValueError(f"{path}: not a decodable image ({op_error(error)})") from None


def check_image(image: Union[str, bytes], height: int, width: int) -> Optional[Tuple[str, str]]:
    """Makes sure the pipeline will be able to decode an image.

    JPEGs are decoded at 1/8 scale, which still reads every entropy-coded
    segment, so a truncated or corrupt file fails here at a fraction of a full
    decode's cost; other formats are decoded fully.

    Args:
        image: path (str) or encoded bytes.
        height, width: the size the annotation claims.

    Returns:
        ``None`` if the image is usable, else ``(kind, detail)``.
    """
    import tensorflow as tf

    try:
        data = tf.io.read_file(image) if isinstance(image, str) else tf.constant(image)
    except tf.errors.OpError as error:
        return "missing image", op_error(error)
    kind = image_format(data.numpy()[:16])
    if kind is None:
        return "not an image", (
            "unknown format (JPEG, PNG, GIF, BMP or WebP expected); "
            f"first bytes {data.numpy()[:8]!r}"
        )
    try:
        if kind == "JPEG":
            shape = tf.image.extract_jpeg_shape(data).numpy()
            tf.io.decode_jpeg(data, channels=3, ratio=8)
        else:
            shape = tf.shape(decode_image(data)).numpy()
    except tf.errors.OpError as error:
        return f"corrupt or truncated {kind}", op_error(error)
    if (int(shape[0]), int(shape[1])) != (int(height), int(width)):
        return "image size mismatch", (
            f"annotation says {height}x{width} (HxW), the {kind} is {shape[0]}x{shape[1]}"
        )
    return None


def verify_images(records: Sequence[Record], issues: IssueLog) -> List[Record]:
    """Drops (or raises on) records whose image is missing or undecodable."""
    kept = []
    for record in records:
        name = record.image if isinstance(record.image, str) else record.name
        problem = check_image(record.image, record.height, record.width)
        if problem is None:
            kept.append(record)
        else:
            issues.bad_file(name, *problem)
    return kept

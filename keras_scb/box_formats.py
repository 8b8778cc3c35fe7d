"""Keras bounding-box formats <-> the library's relative corners.

A detector declares the ``bounding_box_format`` its users speak
(`keras_scb.models.Detector.bounding_box_format`): the box dicts ``fit`` takes
and the boxes ``predict`` returns are in it. Inside, the library keeps one
layout, relative ``[xmin, ymin, xmax, ymax]`` (docs/architecture.md); the
conversion is Keras's own ``keras.utils.bounding_boxes.convert_format``
(``keras.ops``, any backend, jittable), with the pixel formats relative to the
detector's square input of side ``S``, as keras-hub's detectors do.

Formats (Keras's names): ``xyxy`` ``[left, top, right, bottom]``, ``yxyx``,
``xywh`` ``[left, top, width, height]``, ``center_xywh``, ``center_yxhw``, and
the relative ``rel_xyxy``, ``rel_yxyx``, ``rel_xywh``, ``rel_center_xywh``
(coordinates divided by the image side).
"""

from typing import Any

import keras

BOX_FORMATS = (
    "xyxy",
    "yxyx",
    "xywh",
    "center_xywh",
    "center_yxhw",
    "rel_xyxy",
    "rel_yxyx",
    "rel_xywh",
    "rel_center_xywh",
)
# The library's own layout (relative corners), what every loss and decoder takes.
LIBRARY_FORMAT = "rel_xyxy"


def check_box_format(box_format: str, argument: str = "bounding_box_format") -> str:
    """``box_format`` if it is one of `BOX_FORMATS`; a one-line ValueError naming
    ``argument`` otherwise."""
    if box_format not in BOX_FORMATS:
        raise ValueError(
            f"{argument}={box_format!r} is not a Keras bounding box format; "
            f"expected one of {BOX_FORMATS}."
        )
    return box_format


def to_relative_corners(boxes: Any, box_format: str, image_size: int) -> Any:
    """``(..., 4)`` boxes in ``box_format`` -> float32 relative ``[xmin, ymin, xmax, ymax]``.

    Args:
        boxes: ``(..., 4)`` tensor or array.
        box_format: one of `BOX_FORMATS`; pixel formats are in pixels of the
            ``image_size x image_size`` detector input.
        image_size: side ``S`` of the detector input.
    """
    return keras.utils.bounding_boxes.convert_format(
        boxes, check_box_format(box_format), LIBRARY_FORMAT,
        height=image_size, width=image_size,
    )


def from_relative_corners(boxes: Any, box_format: str, image_size: int) -> Any:
    """The inverse of `to_relative_corners`: relative corners -> float32 ``box_format``."""
    return keras.utils.bounding_boxes.convert_format(
        boxes, LIBRARY_FORMAT, check_box_format(box_format),
        height=image_size, width=image_size,
    )

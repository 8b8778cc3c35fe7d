"""Registry of detector builders: the one place a detector's name is looked up.

A builder is a function ``builder(num_classes, **kwargs) -> Detector``; modules
register theirs with ``@register_detector("name", output_layout=...)`` and are
imported by ``keras_scb.models`` so that the registry is complete. Adding a
detector is one module with its builder plus that one decorator line.
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

from keras_scb.box_formats import check_box_format
from keras_scb.models.detector import Detector, check_class_names
from keras_scb.output_layout import SSD, TARGETS, check_layout

# A builder: ``builder(num_classes, **kwargs) -> Detector``.
Builder = Callable[..., Detector]


@dataclasses.dataclass(frozen=True)
class DetectorEntry:
    """What the registry knows of a detector before building it.

    Attributes:
        name: the registry key.
        builder: ``builder(num_classes, **kwargs) -> Detector``.
        output_layout: ``"ssd"`` or ``"refinedet"`` (`keras_scb.output_layout`).
        targets: ``"ssd"`` or ``"gt"``, the training targets of that layout.
    """

    name: str
    builder: Builder
    output_layout: str
    targets: str


DETECTORS: dict[str, DetectorEntry] = {}


def register_detector(
    name: str, output_layout: str = SSD, targets: Optional[str] = None
) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name``.

    Args:
        name: the registry key (what ``--model`` and `build_detector` take).
        output_layout: the layout of the built model's output.
        targets: its training targets; default: the layout's
            (`keras_scb.output_layout.TARGETS`).
    """
    check_layout(output_layout)
    targets = TARGETS[output_layout] if targets is None else targets

    def register(builder: Builder) -> Builder:
        if name in DETECTORS:
            raise ValueError(f"Detector {name!r} is already registered.")
        DETECTORS[name] = DetectorEntry(name, builder, output_layout, targets)
        return builder

    return register


def available_detectors() -> list[str]:
    """Sorted names of the registered detectors."""
    return sorted(DETECTORS)


def detector_entry(name: str) -> DetectorEntry:
    """The registry entry of ``name``; a ValueError listing the names otherwise."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(
            f"Unknown detector {name!r}; available: {available_detectors()}."
        ) from None


def build_detector(
    name: str,
    num_classes: int,
    class_names: Optional[Sequence[str]] = None,
    bounding_box_format: str = "xyxy",
    **kwargs: Any,
) -> Detector:
    """Builds a registered detector.

    Args:
        name: one of `available_detectors()`.
        num_classes: number of foreground classes ``C``.
        class_names: optional ``C`` class names stored with the model.
        bounding_box_format: the Keras box format of ``fit``'s box dicts and
            ``predict``'s boxes (`keras_scb.box_formats.BOX_FORMATS`; pixel
            formats in pixels of the model input).
        **kwargs: builder-specific options (e.g. ``anchors``, ``backbone_weights``).

    Returns:
        A `keras_scb.models.detector.Detector` with its ``registry_name``,
        ``class_names`` and ``bounding_box_format`` set; its ``output_layout``
        and ``targets`` are the builder's, which must be the registered ones.
    """
    check_box_format(bounding_box_format)
    entry = detector_entry(name)
    detector = entry.builder(num_classes, **kwargs)
    built = (detector.output_layout, detector.targets)
    if built != (entry.output_layout, entry.targets):
        # A bug in the builder or its registration, not bad input: a traceback.
        raise RuntimeError(
            f"the builder of {name!r} returned output_layout, targets = {built}; it is "
            f"registered with {(entry.output_layout, entry.targets)}."
        )
    detector.registry_name = entry.name
    detector.class_names = check_class_names(class_names, detector.num_classes)
    detector.bounding_box_format = bounding_box_format
    return detector

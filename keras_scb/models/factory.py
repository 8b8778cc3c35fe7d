"""Registry of detector builders.

A builder is a function ``builder(num_classes, **kwargs) -> Detector``; modules
register theirs with ``@register_detector("name")`` and are imported by
``keras_scb.models`` so that the registry is complete.
"""

from typing import Any, Callable

from keras_scb.models.detector import Detector

# A builder: ``builder(num_classes, **kwargs) -> Detector``.
Builder = Callable[..., Detector]

DETECTORS: dict[str, Builder] = {}


def register_detector(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name``."""

    def register(builder: Builder) -> Builder:
        if name in DETECTORS:
            raise ValueError(f"Detector {name!r} is already registered.")
        DETECTORS[name] = builder
        return builder

    return register


def available_detectors() -> list[str]:
    """Sorted names of the registered detectors."""
    return sorted(DETECTORS)


def build_detector(name: str, num_classes: int, **kwargs: Any) -> Detector:
    """Builds a registered detector.

    Args:
        name: one of `available_detectors()`.
        num_classes: number of foreground classes ``C``.
        **kwargs: builder-specific options (e.g. ``anchors``, ``backbone_weights``).

    Returns:
        A `keras_scb.models.detector.Detector`.
    """
    try:
        builder = DETECTORS[name]
    except KeyError:
        raise ValueError(
            f"Unknown detector {name!r}; available: {available_detectors()}."
        ) from None
    return builder(num_classes, **kwargs)

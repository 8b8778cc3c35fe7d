"""SSD-family detector networks (Keras layers only; importable without TensorFlow).

Importing this package registers every detector with `build_detector`.
"""

import importlib
import importlib.util

from keras_scb.models import fssd, ssd, ssdlite  # noqa: F401  (register builders)
from keras_scb.models.detector import Detector
from keras_scb.models.factory import (
    available_detectors,
    build_detector,
    register_detector,
)

# Detectors written in parallel by other modules register themselves once present.
for _module in ("dssd", "refinedet"):
    if importlib.util.find_spec(f"{__name__}.{_module}") is not None:
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Detector", "available_detectors", "build_detector", "register_detector"]

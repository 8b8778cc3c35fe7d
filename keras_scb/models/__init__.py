"""SSD-family detector networks (Keras layers only; importable without TensorFlow).

Importing this package registers every detector with `build_detector`.
"""

# Imported for their `register_detector` side effect.
from keras_scb.models import dssd, fssd, refinedet, ssd, ssdlite  # noqa: F401
from keras_scb.models.detector import Detector
# Registers the trainer's optimizer, so a checkpoint saved with its optimizer
# state loads with this import alone.
from keras_scb import optimizers  # noqa: E402,F401
from keras_scb.models.factory import (
    available_detectors,
    build_detector,
    detector_entry,
    register_detector,
)

__all__ = [
    "Detector",
    "available_detectors",
    "build_detector",
    "detector_entry",
    "register_detector",
]

# A checkpoint saved with its loss and optimizer needs these classes registered too;
# importing them here makes ``import keras_scb.models`` enough to load it.
from keras_scb import losses, refinedet_loss, schedules  # noqa: E402,F401

"""`Detector`: a functional Keras model that knows its anchors.

Every builder returns a `Detector`, so the training and inference code can ask a
model (including one loaded from a ``.keras`` file) for its anchors, input size
and number of classes.
"""

import dataclasses

import keras
import numpy as np

from keras_scb.anchors import AnchorSpec, get_anchor_spec, get_anchors


def anchor_spec_to_config(name_or_spec: str | AnchorSpec) -> dict:
    """A preset name or `AnchorSpec` -> plain JSON-able dict of the spec."""
    return dataclasses.asdict(get_anchor_spec(name_or_spec))


def anchor_spec_from_config(config: dict | str | AnchorSpec) -> AnchorSpec:
    """Inverse of `anchor_spec_to_config` (also accepts a name or a spec)."""
    if not isinstance(config, dict):
        return get_anchor_spec(config)

    def as_tuple(value):
        if isinstance(value, (list, tuple)):
            return tuple(as_tuple(v) for v in value)
        return value

    return AnchorSpec(**{k: as_tuple(v) for k, v in config.items()})


@keras.saving.register_keras_serializable(package="keras_scb")
class Detector(keras.Model):
    """A functional model ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, 4 + C + 1)``.

    Build it like a functional model, ``Detector(inputs, outputs,
    anchor_spec=..., num_classes=..., name=...)``; the extra arguments are saved
    in its config, so ``keras.saving.load_model`` gives back a `Detector`.

    Attributes:
        anchor_spec: the `AnchorSpec` whose anchor order the output follows.
        anchors: float32 ``(A, 4)`` relative ``[cx, cy, w, h]``.
        image_size: side ``S`` of the square input.
        num_classes: number of foreground classes ``C``.
    """

    # *args/**kwargs keep the functional signature, which Keras needs to rebuild
    # the graph from the config.
    def __init__(
        self, *args, anchor_spec: str | AnchorSpec | dict, num_classes: int, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.anchor_spec = anchor_spec_from_config(anchor_spec)
        self.num_classes = int(num_classes)

    @property
    def anchors(self) -> np.ndarray:
        return get_anchors(self.anchor_spec)

    @property
    def image_size(self) -> int:
        return self.anchor_spec.image_size

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "anchor_spec": anchor_spec_to_config(self.anchor_spec),
            "num_classes": self.num_classes,
        }

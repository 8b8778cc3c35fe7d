"""`Detector`: a functional Keras model that knows its anchors and what it is.

Every builder returns a `Detector`, so the training and inference code can ask a
model (including one loaded from a ``.keras`` file) for its anchors, input size,
number of classes, registry name, output layout and training targets.
"""

from typing import Optional, Sequence

import keras
import numpy as np

from keras_scb.anchors import (
    AnchorSpec,
    anchor_spec_from_config,
    anchor_spec_to_config,
    get_anchors,
)
from keras_scb.box_formats import check_box_format
from keras_scb.models.task import DetectionTask
from keras_scb.models.layers import InputNormalization, input_normalization
from keras_scb.output_layout import SSD, TARGETS, check_layout


@keras.saving.register_keras_serializable(package="keras_scb")
class Detector(DetectionTask, keras.Model):
    """A functional model ``(B, S, S, 3)`` pixels in ``[0, 255]`` -> ``(B, A, D)``.

    Called, it gives the raw output; ``fit`` takes box dicts in its
    ``bounding_box_format`` (or the library's encoded targets) and ``predict``
    returns decoded detections, keras-hub style (`keras_scb.models.task`);
    ``predict_raw`` gives the raw output.

    Build it like a functional model, ``Detector(inputs, outputs,
    anchor_spec=..., num_classes=..., name=...)``; the extra arguments are saved
    in its config, so ``keras.saving.load_model`` gives back a `Detector`.
    Builders pass their ``output_layout``; `keras_scb.models.build_detector`
    sets ``registry_name`` and checks the layout against the registry entry.

    Attributes:
        anchor_spec: the `AnchorSpec` whose anchor order the output follows.
        anchors: float32 ``(A, 4)`` relative ``[cx, cy, w, h]``.
        image_size: side ``S`` of the square input.
        num_classes: number of foreground classes ``C``.
        registry_name: the `build_detector` name that builds it again (e.g.
            ``"mobilenetv2-ssdlite300"``; the Keras ``name`` may differ), or None.
        output_layout: ``"ssd"`` (``D = 4 + C + 1``) or ``"refinedet"``
            (``D = 10 + C + 1``); see `keras_scb.output_layout`.
        targets: what it trains on, ``"ssd"`` (encoded anchors) or ``"gt"``
            (padded ground truth); the ``targets`` of `keras_scb.data.pipeline`.
        class_names: ``C`` class names (the label map), or None.
        bounding_box_format: the Keras box format of ``fit``'s box dicts and
            ``predict``'s boxes (`keras_scb.box_formats`; pixel formats are
            pixels of the ``S x S`` input). Default ``"xyxy"``.
    """

    # *args/**kwargs keep the functional signature, which Keras needs to rebuild
    # the graph from the config.
    def __init__(
        self,
        *args,
        anchor_spec: str | AnchorSpec | dict,
        num_classes: int,
        registry_name: Optional[str] = None,
        output_layout: str = SSD,
        targets: Optional[str] = None,
        class_names: Optional[Sequence[str]] = None,
        bounding_box_format: str = "xyxy",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.anchor_spec = anchor_spec_from_config(anchor_spec)
        self.num_classes = int(num_classes)
        self.registry_name = registry_name
        self.output_layout = check_layout(output_layout)
        self.targets = TARGETS[self.output_layout] if targets is None else targets
        self.class_names = check_class_names(class_names, self.num_classes)
        self.bounding_box_format = check_box_format(bounding_box_format)

    @property
    def anchors(self) -> np.ndarray:
        return get_anchors(self.anchor_spec)

    @property
    def image_size(self) -> int:
        return self.anchor_spec.image_size

    @property
    def input_normalization(self) -> Optional[InputNormalization]:
        """What the network does first to its RGB ``[0, 255]`` pixels (its
        `layers.CaffeImageNetNormalization`, so saved with it), or None."""
        return input_normalization(self)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "anchor_spec": anchor_spec_to_config(self.anchor_spec),
            "num_classes": self.num_classes,
            "registry_name": self.registry_name,
            "output_layout": self.output_layout,
            "targets": self.targets,
            "class_names": None if self.class_names is None else list(self.class_names),
            "bounding_box_format": self.bounding_box_format,
        }


def check_class_names(
    class_names: Optional[Sequence[str]], num_classes: int
) -> Optional[tuple]:
    """``class_names`` as a tuple of ``num_classes`` strings (or None); raises otherwise."""
    if class_names is None:
        return None
    class_names = tuple(str(name) for name in class_names)
    if len(class_names) != num_classes:
        raise ValueError(
            f"{len(class_names)} class names {list(class_names)} for a model "
            f"of {num_classes} classes."
        )
    return class_names

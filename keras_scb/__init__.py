"""keras-scb: SSD-family detectors in Keras 3 trained with the scale-balanced loss.

Modules: `anchors` (priors), `box_coding`, `matching` (assignment), `output_layout`,
`losses` (`ScaleBalancedLoss`, `MultiBoxLoss`), `models` (detectors), `postprocess`
(decoding and NMS), `data` (datasets and tf.data pipelines), `evaluation` (metrics),
`validation` (a detector on a dataset); see ``docs/architecture.md``.
Importing the package imports none of them, so ``keras_scb.anchors``,
``keras_scb.losses`` and ``keras_scb.models`` load without TensorFlow.
"""

__version__ = "0.1.0"

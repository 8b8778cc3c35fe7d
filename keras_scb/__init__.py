"""keras-scb: SSD-family detectors in Keras 3 trained with the scale-balanced loss.

Modules: `anchors` (priors), `matching` (assignment and box coding), `losses`
(`ScaleBalancedLoss`, `MultiBoxLoss`), `models` (detectors), `decoding`
(box decoding and NMS), `data` (datasets and tf.data pipelines), `evaluation`.
Importing the package imports none of them, so ``keras_scb.anchors``,
``keras_scb.losses`` and ``keras_scb.models`` load without TensorFlow.
"""

__version__ = "0.1.0"

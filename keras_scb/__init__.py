"""keras-scb: SSD-family detectors in Keras 3 trained with the scale-balanced loss.

Modules: `anchors` (priors), `box_coding`, `box_formats`, `matching` (assignment),
`output_layout`, `losses` (`ScaleBalancedLoss`, `MultiBoxLoss`), `models`
(detectors), `decoding` and `postprocess` (decoding and NMS), `data` (datasets and
tf.data pipelines), `evaluation` (metrics), `validation` (a detector on a
dataset); see ``docs/architecture.md``.

``import keras_scb`` registers every Keras object the library saves (detectors,
losses, schedules, optimizers, `MatchOnDevice`, the inference model's
`DetectionDecoder`), so ``keras.saving.load_model`` reads any ``.keras`` file it
wrote, as ``import keras_hub`` does. None of them needs TensorFlow: under JAX the
package imports without it. The TF `postprocess.PostProcessor` (in inference
models written before `DetectionDecoder`) is registered under the TensorFlow
backend only.
"""

__version__ = "0.1.0"

import keras as _keras

# Imported for their `register_keras_serializable` side effect.
from keras_scb import decoding as _decoding  # noqa: E402,F401
from keras_scb import models as _models  # noqa: E402,F401  (+ losses, schedules, optimizers)
from keras_scb import on_device as _on_device  # noqa: E402,F401

if _keras.backend.backend() == "tensorflow":
    from keras_scb import postprocess as _postprocess  # noqa: E402,F401

"""Exporters of keras-scb detectors: SavedModel, TFLite, ONNX, inference-cost comparison, predict.

Command lines (absl flags; ``--help`` lists them):

- ``python -m exporters.saved_model --checkpoint CKPT --output DIR``
- ``python -m exporters.tflite --checkpoint CKPT --output FILE --precision fp32|fp16|int8``
- ``python -m exporters.onnx --checkpoint CKPT --output FILE.onnx --precision fp32|fp16`` (optional onnx)
- ``python -m exporters.accuracy --checkpoint CKPT --dataset bccd --val_split test``
- ``python -m exporters.compare_cost BASELINE_CKPT SCB_CKPT``
- ``python -m exporters.mediapipe_check --checkpoint FILE.tflite --images DIR`` (optional mediapipe)
- ``python -m exporters.predict --checkpoint MODEL --images IMAGES --output_dir DIR``

A checkpoint is a ``.keras`` file of a `keras_scb.models.Detector`; it is loaded
without its loss (``compile=False``), so no export depends on how it was trained.
See `exporters.common` for the serving inputs and outputs shared by every format.
"""

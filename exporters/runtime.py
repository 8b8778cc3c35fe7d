"""Run an exported model (TFLite, SavedModel, ONNX) or a checkpoint with one interface.

Every runner takes uint8 images ``(B, S, S, 3)`` at the model's size ``S``
(`resize_images` prepares any image) and returns numpy arrays under
`exporters.common.DETECTION_KEYS`.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np

from exporters import common
from keras_scb.cli import UserError

SMOKE_LOAD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smoke_load.py")


class SmokeLoadError(UserError):
    """An exported file crashed the runtime or gave non-finite outputs."""


# The runtime that `smoke_load` loads a file in, by extension: what its messages call it.
SMOKE_LOAD_RUNTIMES = {
    ".tflite": "The LiteRT interpreter with its default delegate (XNNPACK)",
    ".onnx": "onnxruntime (CPU execution provider)",
}


def smoke_load(path, name=None, timeout=600):
    """Loads ``path`` (``.tflite``: the LiteRT interpreter with its default
    options, XNNPACK; ``.onnx``: onnxruntime) in a child process and runs it
    once (`exporters/smoke_load.py`).

    In a child process because a runtime that aborts (``double free``,
    segmentation fault) would take the caller with it.

    Args:
        path: the file to load.
        name: how the messages name it (the final path of a temporary file);
            its extension picks the runtime.
        timeout: seconds before the load counts as hung.

    Raises:
        SmokeLoadError: the child crashed, failed or gave non-finite outputs.
    """
    name = os.fspath(name or path)
    # By the final name's extension: a temporary file's name may not keep it.
    extension = os.path.splitext(name)[1]
    what = SMOKE_LOAD_RUNTIMES[extension]
    try:
        result = subprocess.run(
            [sys.executable, SMOKE_LOAD_SCRIPT, os.fspath(path), extension],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise SmokeLoadError(f"{what} did not run {name} within {timeout} s.") from None
    if result.returncode == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    detail = lines[-1].strip() if lines else "no message"
    if result.returncode < 0:
        death = signal.Signals(-result.returncode).name
        raise SmokeLoadError(f"{what} crashed ({death}) loading {name}: {detail}.")
    raise SmokeLoadError(f"{what} failed on {name} (exit {result.returncode}): {detail}.")


def resize_images(images, image_size):
    """uint8 ``(B, H, W, 3)`` or one ``(H, W, 3)`` -> uint8 ``(B, S, S, 3)``.

    Bilinear, aspect ratio not kept, as the training and validation pipelines
    do; rounded back to uint8, the exported models' input type.
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.shape[1:3] == (image_size, image_size):
        return images.astype(np.uint8)
    resized = tf.image.resize(tf.cast(images, tf.float32), (image_size, image_size))
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


class TFLiteDetector:
    """A ``.tflite`` file written by `exporters.tflite` in the LiteRT interpreter.

    Calling it needs the detection outputs; `invoke` (for timing) runs any model
    with one uint8 input.

    Args:
        model: path of the file, or its bytes.
        num_threads: interpreter threads (``None``: the interpreter's default).
    """

    def __init__(self, model, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, (bytes, bytearray)):
            self.interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
        else:
            self.interpreter = Interpreter(model_path=os.fspath(model), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        (self._input,) = self.interpreter.get_input_details()
        self._outputs = [o["index"] for o in self.interpreter.get_output_details()]
        self.image_size = int(self._input["shape"][1])

    def invoke(self, image):
        """Runs one uint8 ``(1, S, S, 3)`` image; the outputs stay in the interpreter."""
        self.interpreter.set_tensor(self._input["index"], image)
        self.interpreter.invoke()

    def __call__(self, images):
        if len(self._outputs) != len(common.DETECTION_KEYS):
            raise ValueError(f"{len(self._outputs)} outputs; expected boxes, classes, scores, count.")
        results = []
        for image in np.asarray(images, np.uint8):
            self.invoke(image[None])
            results.append([self.interpreter.get_tensor(i) for i in self._outputs])
        return {
            key: np.concatenate([r[k] for r in results])
            for k, key in enumerate(common.DETECTION_KEYS)
        }


class SavedModelDetector:
    """The ``detect_zero_based`` signature of a SavedModel written by `exporters.saved_model`
    (class ids ``0..C-1``, as the other runners; ``serving_default`` is the OD API's, 1-based)."""

    def __init__(self, folder):
        import tensorflow as tf

        self.folder = os.fspath(folder)
        self.metadata = common.read_export_metadata(self.folder)
        signatures = tf.saved_model.load(self.folder).signatures
        if "detect_zero_based" not in signatures:
            raise ValueError(f"SavedModel {self.folder} has no 'detect_zero_based' signature "
                             f"(it has {sorted(signatures)}): not written by exporters.saved_model.")
        self._serve = signatures["detect_zero_based"]
        self.image_size = self.metadata["image_size"]

    def __call__(self, images):
        import tensorflow as tf

        outputs = self._serve(images=tf.constant(images, tf.uint8))
        return {key: outputs[key].numpy() for key in common.DETECTION_KEYS}


class OnnxDetector:
    """A ``.onnx`` file written by `exporters.onnx` in onnxruntime (CPU).

    Takes uint8 ``(B, H, W, 3)`` of any size (the graph resizes); ``image_size``
    is the model's own.

    Args:
        model: path of the file, or its bytes.
        num_threads: onnxruntime's intra-op threads (``None``: its default).
    """

    def __init__(self, model, num_threads=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        if not isinstance(model, (bytes, bytearray)):
            model = os.fspath(model)
        self.session = onnxruntime.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )
        properties = self.session.get_modelmeta().custom_metadata_map
        self.metadata = json.loads(properties[common.METADATA_NAME])
        self.image_size = int(self.metadata["image_size"])
        (self._input,) = self.session.get_inputs()

    def __call__(self, images):
        feed = {self._input.name: np.asarray(images, np.uint8)}
        outputs = self.session.run(list(common.DETECTION_KEYS), feed)
        return dict(zip(common.DETECTION_KEYS, outputs))


class KerasDetector:
    """A `keras_scb.models.Detector` (or a ``.keras`` checkpoint) with its decoder.

    Args:
        detector: a Detector or the path of a checkpoint.
        **decoder_kwargs: `keras_scb.postprocess.PostProcessor` options.
    """

    def __init__(self, detector, **decoder_kwargs):
        import tensorflow as tf

        if not hasattr(detector, "anchor_spec"):
            detector = common.load_detector(detector)
        self.detector = detector
        self.image_size = detector.image_size
        self._detect = tf.function(common.serving_function(detector, **decoder_kwargs))

    def __call__(self, images):
        import tensorflow as tf

        outputs = self._detect(tf.constant(images, tf.uint8))
        return {key: outputs[key].numpy() for key in common.DETECTION_KEYS}


def load_runner(path, num_threads=None, **decoder_kwargs):
    """A runner for ``path``: a ``.tflite`` or ``.onnx`` file, a SavedModel folder or a ``.keras`` file.

    ``decoder_kwargs`` apply to checkpoints only: an export carries its own.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return SavedModelDetector(path)
    if path.endswith(".tflite"):
        return TFLiteDetector(path, num_threads)
    if path.endswith(".onnx"):
        return OnnxDetector(path, num_threads)
    if path.endswith(".keras"):
        return KerasDetector(path, **decoder_kwargs)
    raise ValueError(
        f"{path}: expected a .tflite or .onnx file, a SavedModel folder or a .keras checkpoint."
    )

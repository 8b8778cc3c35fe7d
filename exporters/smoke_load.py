"""Load an exported file as a client would and run it once (a script for a child process).

    python exporters/smoke_load.py MODEL [.tflite|.onnx]

(the format: the second argument, else the file's extension).

A ``.tflite`` file: the LiteRT interpreter with its default options (the XNNPACK
delegate on, as in MediaPipe, the Task Library and ``keras_scb``'s own runner)
allocates the tensors and runs one deterministic noise image per input. A
``.onnx`` file: onnxruntime's CPU session, fed one noise batch per input (a
dimension without a fixed size gets `FREE_SIZE`, e.g. a 2-image batch of
non-square images, which the graph resizes). Exit status 0: the outputs are
finite; 3: an output has non-finite values (named on stderr); a crash of the
runtime kills this process, which `exporters.runtime.smoke_load` reports.
Imports only numpy and the runtime (no TensorFlow, no project code), so it
starts fast and runs what a deployed client runs.
"""

import os
import sys

# Python puts this script's folder first on the path, and that folder holds
# exporters/onnx.py: a runtime that imports the ``onnx`` package would get it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import numpy as np  # noqa: E402

NON_FINITE = 3
# Sizes for the (batch, height, width) dimensions an ONNX input leaves free.
FREE_SIZE = (2, 240, 320)


def noise(shape, dtype, rng):
    """Deterministic noise of ``shape``: the dtype's range for integers, [0, 255] for floats."""
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (info.min, info.max) if info else (0.0, 255.0)
    return rng.uniform(low, high, shape).astype(dtype)


def run_tflite(path):
    """``{output name: array}`` of one invocation of the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], noise(detail["shape"], detail["dtype"], rng))
    interpreter.invoke()
    return {
        detail["name"]: interpreter.get_tensor(detail["index"])
        for detail in interpreter.get_output_details()
    }


def run_onnx(path):
    """``{output name: array}`` of one run of an onnxruntime CPU session."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    dtypes = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}
    feed = {}
    for detail in session.get_inputs():
        shape = [
            size if isinstance(size, int) else FREE_SIZE[min(axis, len(FREE_SIZE) - 1)]
            for axis, size in enumerate(detail.shape)
        ]
        feed[detail.name] = noise(shape, dtypes[detail.type], rng)
    names = [detail.name for detail in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def main(path: str, extension: str = "") -> int:
    extension = extension or os.path.splitext(path)[1]
    outputs = run_onnx(path) if extension == ".onnx" else run_tflite(path)
    bad = [name for name, value in outputs.items() if not np.all(np.isfinite(value))]
    if bad:
        print(f"non-finite values in output {', '.join(bad)}", file=sys.stderr)
        return NON_FINITE
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

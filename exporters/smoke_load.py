"""Load a ``.tflite`` file as a client would and run it once (a script for a child process).

    python exporters/smoke_load.py MODEL.tflite

The LiteRT interpreter with its default options (the XNNPACK delegate on, as
in MediaPipe, the Task Library and ``keras_scb``'s own runner) allocates the
tensors and runs one deterministic noise image per input. Exit status 0: the
outputs are finite; 3: an output has non-finite values (named on stderr); a
crash of the runtime kills this process, which `exporters.runtime.smoke_load`
reports. Imports only numpy and LiteRT (no TensorFlow, no project code), so it
starts fast and runs what a deployed client runs.
"""

import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter

NON_FINITE = 3


def main(path: str) -> int:
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    noise = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        info = np.iinfo(detail["dtype"]) if np.issubdtype(detail["dtype"], np.integer) else None
        low, high = (info.min, info.max) if info else (0.0, 255.0)
        values = noise.uniform(low, high, detail["shape"]).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], values)
    interpreter.invoke()
    bad = [
        detail["name"]
        for detail in interpreter.get_output_details()
        if not np.all(np.isfinite(interpreter.get_tensor(detail["index"])))
    ]
    if bad:
        print(f"non-finite values in output {', '.join(bad)}", file=sys.stderr)
        return NON_FINITE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

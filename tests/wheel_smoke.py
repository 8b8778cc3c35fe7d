"""Smoke test of an installed keras-scb wheel, run from a folder outside the checkout.

    make test-wheel    # builds the wheel, installs it into a fresh venv, runs this there

Checks what a user of the wheel gets: the package imports from site-packages
(not from a checkout), the vendored ImageNet weights load into the quickstart
detector, the quickstart data (BCCD) is found in the installed data files, one
training step of the quickstart model writes a checkpoint, and
``exporters.predict`` draws its detections of a BCCD image. Prints one line per
check; exits non-zero (with the traceback) on the first failure.
"""

import os
import subprocess
import sys
import tempfile


def check(what: str, ok: bool, detail: str = "") -> None:
    if not ok:
        raise SystemExit(f"FAILED: {what} {detail}")
    print(f"ok: {what} {detail}".rstrip(), flush=True)


def main() -> None:
    import keras
    import numpy as np

    import exporters
    import keras_scb
    from keras_scb.data import vendored
    from keras_scb.models import backbones, build_detector

    here = os.getcwd()
    for module in (keras_scb, exporters):
        location = os.path.dirname(module.__file__)
        check(f"{module.__name__} imports from site-packages", "site-packages" in location
              and not location.startswith(here), location)
    check("vendored weights installed", os.path.isfile(backbones.VENDORED_MOBILENET_V2),
          backbones.VENDORED_MOBILENET_V2)
    keras.utils.set_random_seed(0)
    detector = build_detector("mobilenetv2-ssdlite300", 3)
    keras.utils.set_random_seed(0)
    untrained = build_detector("mobilenetv2-ssdlite300", 3, backbone_weights=None)
    first = next(i for i, w in enumerate(detector.weights) if len(w.shape) == 4)
    check("vendored weights loaded (first kernel differs from the random one)",
          not np.allclose(detector.weights[first].numpy(), untrained.weights[first].numpy()))

    root = vendored.bccd_root()
    check("quickstart data found in the installed data files",
          root.startswith(sys.prefix) and "share" in root, root)
    test = vendored.load_bccd("test")
    check("BCCD test split reads", len(test.records) == 72, f"{len(test.records)} images")

    with tempfile.TemporaryDirectory() as folder:
        run = os.path.join(folder, "run")
        subprocess.run([
            sys.executable, "-m", "keras_scb.train", "--model=mobilenetv2-ssdlite300",
            "--dataset=bccd", "--train_split=train", "--val_split=test", "--batch_size=2",
            "--epochs=1", "--steps_per_epoch=1", "--eval_every=0", "--nofinal_eval",
            "--verbose=0", f"--model_dir={run}",
        ], check=True)
        checkpoint = os.path.join(run, "last.keras")
        check("one training step writes a checkpoint", os.path.isfile(checkpoint), checkpoint)
        image = os.path.join(root, "JPEGImages", "BloodImage_00007.jpg")
        out = os.path.join(folder, "predictions")
        subprocess.run([
            sys.executable, "-m", "exporters.predict", f"--model_path={checkpoint}",
            f"--images={image}", f"--output_dir={out}", "--score_threshold=0.1",
        ], check=True)
        check("exporters.predict draws the detections",
              os.path.isfile(os.path.join(out, "BloodImage_00007.jpg.png")))
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()

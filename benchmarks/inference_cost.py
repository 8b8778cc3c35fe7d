"""SCB leaves inference cost unchanged: TFLite graphs, sizes and latency side by side.

    python benchmarks/inference_cost.py --baseline BASELINE.keras --scb SCB.keras
    python benchmarks/inference_cost.py [--model mobilenetv2-ssdlite300] [--rounds 20]

With checkpoints, this is `python -m exporters.compare_cost` with more rounds.
Without, it makes the two checkpoints the comparison is about: the same
architecture with different weights (as two trainings give), one compiled with
`MultiBoxLoss` and one with `ScaleBalancedLoss`, saved and loaded back; it also
checks that one set of weights exports to the same bytes whichever loss it was
compiled with.
"""

import argparse
import os
import sys
import tempfile


def _checkpoints(model, num_classes, folder):
    import keras

    from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
    from keras_scb.models import build_detector

    paths = {}
    for seed, (name, loss) in enumerate((("baseline", MultiBoxLoss()), ("scb", ScaleBalancedLoss()))):
        keras.utils.set_random_seed(seed)
        detector = build_detector(model, num_classes)
        detector.compile(optimizer="sgd", loss=loss)
        paths[name] = os.path.join(folder, f"{name}.keras")
        detector.save(paths[name])
    # The baseline's weights again, compiled with the other loss.
    detector = keras.saving.load_model(paths["baseline"])
    detector.compile(optimizer="sgd", loss=ScaleBalancedLoss())
    paths["baseline_weights_scb_loss"] = os.path.join(folder, "baseline_weights_scb_loss.keras")
    detector.save(paths["baseline_weights_scb_loss"])
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="checkpoint trained with MultiBoxLoss")
    parser.add_argument("--scb", help="checkpoint trained with ScaleBalancedLoss")
    parser.add_argument("--model", default="mobilenetv2-ssdlite300", help="without checkpoints")
    parser.add_argument("--num_classes", type=int, default=3, help="without checkpoints (BCCD: 3)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs_per_round", type=int, default=5)
    parser.add_argument("--output_json")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from exporters import common, compare_cost, tflite

    with tempfile.TemporaryDirectory() as folder:
        if args.baseline and args.scb:
            paths = {"baseline": args.baseline, "scb": args.scb}
        elif args.baseline or args.scb:
            sys.exit("Give both --baseline and --scb, or neither.")
        else:
            paths = _checkpoints(args.model, args.num_classes, folder)
        detectors = {name: common.load_detector(path) for name, path in paths.items()}
        representative = None
        if args.precision == "int8":
            representative = tflite.representative_images("synthetic", detectors["baseline"].image_size, 32)
        report = compare_cost.compare(
            detectors["baseline"], detectors["scb"], args.precision,
            [int(t) for t in args.threads.split(",")], args.rounds, args.runs_per_round,
            representative,
        )
        print(compare_cost.markdown(report))
        if "baseline_weights_scb_loss" in detectors:
            same = tflite.convert(detectors["baseline"], args.precision, representative) == tflite.convert(
                detectors["baseline_weights_scb_loss"], args.precision, representative
            )
            report["same_weights_other_loss_identical_bytes"] = same
            print(f"\nSame weights compiled with MultiBoxLoss / ScaleBalancedLoss: identical .tflite bytes: {same}")
    if args.output_json:
        common.write_json(report, args.output_json)


if __name__ == "__main__":
    main()

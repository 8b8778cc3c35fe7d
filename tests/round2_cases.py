"""Issue 25's classes re-run with new cases: run each, classify the outcome.

    PYTHONPATH=<checkout> ROUND2_REPO=<checkout> python tests/round2_cases.py --out=results.json \
        [--all] [--run_dir=A_FINISHED_1_STEP_RUN]

Runs every case of `CASES` against the code on ``PYTHONPATH`` (this branch, or
main for the "before" column) and prints ``case  class``; the classes are the
issue's: ``clear`` (a one-line error naming the flag, file or field), ``handled``
(done right, and said), ``silent`` (went on, wrong), ``crash`` (a traceback, or
an error that does not name what is wrong) and ``loss`` (an input or an earlier
output changed). A case is a command line (run as a child process) or a call
into the package (run here); either way it may name paths whose bytes must not
change. ``--all`` adds the cases whose command lines import TensorFlow before
they parse their flags (convert, the exporters: ~10 s each on an idle machine).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The checkout whose code the command lines run (python -m puts the working folder first).
REPO = os.environ.get("ROUND2_REPO", os.path.dirname(HERE))
TRAIN = ["--model=mobilenetv2-ssdlite300", "--width_multiplier=0.35",
         "--backbone_weights=none", "--dataset=synthetic", "--synthetic_images=4",
         "--batch_size=2", "--steps_per_epoch=1", "--epochs=1", "--nofinal_eval",
         "--verbose=0", "--noaugment"]


class Case:
    """One try: ``command`` (tool module and flags, ``{D}`` the run folder, ``{T}``
    a fresh folder) or ``call`` (a function of ``T`` and ``D``); ``names``: what the
    error must name; ``expect``: ``"error"``, or ``"handled"`` with ``check`` (a
    function of ``T``, the result) that says the outcome is right; ``keep``: paths
    (relative to ``T``, or ``{D}``) whose contents must not change; ``heavy``:
    only with ``--all``."""

    def __init__(self, name, command=None, call=None, names=(), expect="error", check=None,
                 keep=(), setup=None, heavy=False):
        self.name, self.command, self.call, self.names = name, command, call, names
        self.expect, self.check, self.keep, self.setup, self.heavy = (
            expect, check, keep, setup, heavy)


def _snapshot(paths):
    found = {}
    for path in paths:
        if os.path.isdir(path):
            for root, _, names in os.walk(path):
                for name in names:
                    full = os.path.join(root, name)
                    with open(full, "rb") as f:
                        found[full] = f.read()
        elif os.path.exists(path):
            with open(path, "rb") as f:
                found[path] = f.read()
        else:
            found[path] = None
    return found


def _went_on(folder, since):
    """Whether a training wrote its ``flags.json`` after ``since``: it accepted its
    flags, read the data and restored the backup (every check passed)."""
    path = os.path.join(folder, "flags.json")
    return os.path.exists(path) and os.path.getmtime(path) > since


def _run_command(args):
    """Runs ``python -m ARGS``; a training that gets as far as writing its flags.json
    is stopped there and reported as gone on (rc 0): the case is about whether it
    refuses, and on the main branch every case that is not refused trains."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    model_dir = next((a.split("=", 1)[1] for a in args if a.startswith("--model_dir=")), None)
    since = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=REPO, stdout=out,
                                 stderr=err, text=True)
        while child.poll() is None:
            if model_dir and args[0] == "keras_scb.train" and _went_on(model_dir, since):
                child.kill()
                child.wait()
                return {"rc": 0, "traceback": False, "error": "", "lines": 0,
                        "tail": "went on: wrote flags.json"}
            if time.time() - since > 900:
                child.kill()
            time.sleep(0.2)
        err.seek(0)
        done = subprocess.CompletedProcess(args, child.returncode, "", err.read())
    errors = [line for line in done.stderr.splitlines()
              if ": error: " in line or "Flags parsing error" in line]
    return {"rc": done.returncode, "traceback": "Traceback" in done.stderr,
            "error": errors[-1] if errors else "", "lines": len(errors),
            "tail": done.stderr[-400:]}


def _run_call(call, t, d):
    try:
        value = call(t, d)
    except (ValueError, OSError) as error:  # the package's expected errors (keras_scb.cli)
        text = " ".join(str(error).split())
        return {"rc": 1, "traceback": False, "error": f"{type(error).__name__}: {text}",
                "lines": 1, "value": None}
    except Exception as error:  # a bug: the CLI would print a traceback
        return {"rc": 1, "traceback": True, "error": f"{type(error).__name__}: {error}",
                "lines": 1, "value": None}
    return {"rc": 0, "traceback": False, "error": "", "lines": 0, "value": value}


def classify(case, result, changed):
    if changed:
        return "loss"
    if result["traceback"]:
        return "crash"
    if case.expect == "handled":
        if result["rc"] == 0 and case.check(result):
            return "handled"
        if result["rc"] != 0:
            return "crash"  # refused what should work
        return "silent"
    if result["rc"] == 0:
        return "silent"
    named = all(fragment in result["error"] for fragment in case.names)
    short = result["lines"] == 1 and len(result["error"]) < 2000
    return "clear" if named and short else "crash"


def run_case(case, d):
    t = tempfile.mkdtemp(prefix="case-")
    try:
        if case.setup:
            case.setup(t, d)
        keep = [p.format(D=d, T=t) if "{" in p else os.path.join(t, p) for p in case.keep]
        before = _snapshot(keep)
        if case.command:
            result = _run_command([a.format(D=d, T=t) for a in case.command])
        else:
            result = _run_call(case.call, t, d)
        after = _snapshot(keep)
        # Lost: a file that was there is changed or gone (a new file is not a loss).
        changed = sorted(p for p in before if before[p] is not None and before[p] != after.get(p))
        return classify(case, result, changed), result, changed
    finally:
        shutil.rmtree(t, ignore_errors=True)


# --- fixtures of the cases -------------------------------------------------------------


def _train_run(folder):
    """A finished 1-step run (backup, last.keras, flags.json, history.csv)."""
    done = subprocess.run([sys.executable, "-m", "keras_scb.train", f"--model_dir={folder}", *TRAIN],
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]


def _copy_run(t, d):
    shutil.copytree(d, os.path.join(t, "run"))


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _edit_json(path, **fields):
    with open(path) as f:
        value = json.load(f)
    value.update(fields)
    with open(path, "w") as f:
        json.dump(value, f)


def _tfrecords(t):
    from keras_scb.data import synthetic, tfrecord

    data = synthetic.make_synthetic(4, seed=0, image_size=(32, 32), size_range=(8, 16))
    return tfrecord.write_tfrecords(data, os.path.join(t, "tf", "train"), 2, progress=False)


def _read_tfrecords_with(**fields):
    def call(t, d):
        from keras_scb.data import tfrecord

        meta = _tfrecords(t)
        _edit_json(meta, **fields)
        return tfrecord.read_tfrecords(meta).num_records
    return call


def _restore_with(**fields):
    def call(t, d):
        from keras_scb.callbacks import EpochBackup
        from keras_scb.checkpoints import load_checkpoint

        _copy_run(t, d)
        backup = os.path.join(t, "run", "backup")
        _edit_json(os.path.join(backup, "state.json"), **fields)
        model = load_checkpoint(os.path.join(t, "run", "last.keras"))
        model.compile(optimizer="sgd", loss="mse")
        return EpochBackup(backup).restore(model)
    return call


def _best_json(t, d):
    import keras

    from keras_scb.callbacks import AtomicModelCheckpoint

    _write(os.path.join(t, "best.json"), json.dumps({"monitor": "m", "value": "0.5", "epoch": 1}))
    callback = AtomicModelCheckpoint(t, monitor="m")
    callback.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    callback.on_epoch_end(0, {"m": 0.7, "loss": 1.0})


def _coco(image_fields=None, annotation_fields=None, repeat_category=False):
    def call(t, d):
        from keras_scb.data import coco

        image = {"id": 1, "file_name": "a.jpg", "height": 50, "width": 50, **(image_fields or {})}
        box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0,
               **(annotation_fields or {})}
        categories = [{"id": 1, "name": "cat"}] + ([{"id": 1, "name": "dog"}] if repeat_category
                                                    else [])
        path = os.path.join(t, "instances.json")
        _write(path, json.dumps({"images": [image], "annotations": [box],
                                 "categories": categories}))
        data = coco.read_coco(path, t, verify_images=False)
        return [(len(r.classes), bool(r.difficult.any())) for r in data.records]
    return call


def _voc_entry(entry):
    def call(t, d):
        from keras_scb.data import voc

        _write(os.path.join(t, "voc", "ImageSets", "Main", "train.txt"), f"{entry}\n")
        _write(os.path.join(t, "secret.xml"), "<annotation/>")
        return len(voc.read_voc([os.path.join(t, "voc")], ["train"], ("cat",)))
    return call


def _export_metadata(**fields):
    def call(t, d):
        from exporters import common

        folder = os.path.join(t, "sm")
        _write(os.path.join(folder, common.METADATA_FILE),
               json.dumps({"image_size": 300, "class_names": ["cat"], **fields}))
        return common.read_export_metadata(folder)
    return call


def _labels(names, given):
    def call(t, d):
        from keras_scb import label_map

        _write(os.path.join(t, "labels.txt"), "\n".join(names) + "\n")
        label_map.check_same(given, label_map.labels_beside(os.path.join(t, "m.keras")),
                             "the model", "labels.txt")
    return call


def _png(t, d):
    import numpy as np
    import tensorflow as tf

    os.makedirs(os.path.join(t, "in"))
    with open(os.path.join(t, "in", "a.png"), "wb") as f:
        f.write(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())


def _predict(extra_file=None, overwrite=False):
    def call(t, d):
        import numpy as np

        from exporters import predict

        class Runner:
            image_size = 32

            def __call__(self, images):
                return {"detection_boxes": np.array([[[0.2, 0.2, 0.8, 0.8]]], np.float32),
                        "detection_classes": np.zeros((1, 1), np.float32),
                        "detection_scores": np.full((1, 1), 0.9, np.float32),
                        "num_detections": np.ones(1, np.float32)}

        _png(t, d)
        images, out = os.path.join(t, "in"), os.path.join(t, "out")
        predict.predict(Runner(), [os.path.join(images, "a.png")], out)
        if extra_file:
            _write(os.path.join(out, extra_file), "mine")
        kwargs = {"overwrite": True} if overwrite else {}
        return predict.predict(Runner(), [os.path.join(images, "a.png")], out, **kwargs)
    return call


def _bccd(t, d):
    """A copy of the vendored BCCD (a VOC root) at ``T/voc``."""
    shutil.copytree(os.path.join(REPO, "data", "bccd"), os.path.join(t, "voc"))


def _small_coco(t, d):
    from keras_scb.data import coco, synthetic

    coco.write_coco(synthetic.make_synthetic(2, seed=0, image_size=(32, 32), size_range=(8, 16)),
                    t, "val")


def _lock_with(text):
    def setup(t, d):
        _copy_run(t, d)
        _write(os.path.join(t, "run", "run.lock"), text)
    return setup


def _train_flag(flag, name=None):
    name = name or flag.split("=")[0]
    return Case(f"train {flag}", ["keras_scb.train", "--model_dir={T}/run", *TRAIN, flag],
                names=(name,), keep=("run",))


def _complete(result):
    return result["rc"] == 0


CASES = [
    # --- numbers out of range: train (parsed before anything runs) -----------------
    *[_train_flag(f) for f in [
        "--momentum=1.5", "--momentum=-0.1", "--weight_decay=-1", "--lr_decay=0",
        "--lr_decay_steps=10,5", "--lr_decay_steps=1.5", "--clipnorm=0", "--neg_pos_ratio=-1",
        "--batch_size=-4", "--epochs=0", "--eval_every=-1", "--verbose=7", "--seed=-1",
        "--max_boxes=-1", "--num_classes=-2", "--bn_momentum=1.0", "--synthetic_images=0",
        "--synthetic_small_fraction=1.5", "--synthetic_clutter=-1", "--learning_rate=nan",
        "--beta=inf", "--width_multiplier=-0.5"]],
    Case("evaluate --batch_size=0", ["keras_scb.evaluate", "--checkpoint={D}/last.keras",
                                     "--batch_size=0"], names=("--batch_size=0",)),
    Case("match_stats --iou_threshold=0", ["keras_scb.match_stats", "--output_dir={T}/o",
                                           "--iou_threshold=0"], names=("--iou_threshold=",)),
    Case("match_stats --batch_size=0", ["keras_scb.match_stats", "--output_dir={T}/o",
                                        "--batch_size=0"], names=("--batch_size=0",)),
    Case("match_stats --max_images=-1", ["keras_scb.match_stats", "--output_dir={T}/o",
                                         "--max_images=-1"], names=("--max_images=-1",)),
    Case("predict --num_threads=0", ["exporters.predict", "--model_path={D}/last.keras",
                                     "--images={T}", "--num_threads=0"], names=("--num_threads=0",)),
    Case("predict --score_threshold=-0.1", ["exporters.predict", "--model_path={D}/last.keras",
                                            "--images={T}", "--score_threshold=-0.1"],
         names=("--score_threshold=",)),
    Case("convert --num_shards=0", ["keras_scb.data.convert", "--format=voc", "--voc_roots=x",
                                    "--output={T}/o", "--num_shards=0"],
         names=("--num_shards=0",), heavy=True),
    Case("tflite --iou_threshold=1.5", ["exporters.tflite", "--checkpoint={D}/last.keras",
                                        "--output={T}/m.tflite", "--iou_threshold=1.5"],
         names=("--iou_threshold=1.5",), heavy=True),
    Case("saved_model --pre_nms_top_k=0", ["exporters.saved_model", "--checkpoint={D}/last.keras",
                                           "--output={T}/sm", "--pre_nms_top_k=0"],
         names=("--pre_nms_top_k=0",), heavy=True),
    Case("compare_cost --threads=0", ["exporters.compare_cost", "{D}/last.keras", "{D}/last.keras",
                                      "--threads=0"], names=("--threads=",), heavy=True),
    # --- outputs over, around or inside inputs; --overwrite of what the tool did not write
    Case("saved_model --output=D/backup --overwrite", ["exporters.saved_model",
         "--checkpoint={T}/run/last.keras", "--output={T}/run/backup", "--overwrite"],
         names=("backup", "did not write"), keep=("run",), setup=_copy_run, heavy=True),
    Case("tflite --output=D/history.csv --overwrite", ["exporters.tflite",
         "--checkpoint={T}/run/last.keras", "--output={T}/run/history.csv", "--overwrite"],
         names=("history.csv",), keep=("run",), setup=_copy_run, heavy=True),
    Case("evaluate --results_json=its checkpoint", ["keras_scb.evaluate",
         "--checkpoint={T}/run/last.keras", "--dataset=synthetic", "--output_dir={T}/e",
         "--results_json={T}/run/last.keras", "--overwrite"], names=("last.keras",),
         keep=("run",), setup=_copy_run),
    Case("evaluate twice into one --output_dir", ["keras_scb.evaluate",
         "--checkpoint={T}/run/last.keras", "--dataset=synthetic", "--output_dir={T}/e"],
         names=("metrics.json exists",), keep=("e",),
         setup=lambda t, d: (_copy_run(t, d), _write(os.path.join(t, "e", "metrics.json"), "{}"))),
    Case("evaluate --output_dir inside the tfrecord --data_dir", ["keras_scb.evaluate",
         "--checkpoint={D}/last.keras", "--dataset=tfrecord", "--data_dir={T}/tf",
         "--val_split=train", "--output_dir={T}/tf/eval"], names=("lies inside the input",),
         keep=("tf",), setup=lambda t, d: _tfrecords(t)),
    Case("predict --output_dir = the folder of its model", ["exporters.predict",
         "--model_path={T}/run/last.keras", "--images={T}/run", "--output_dir={T}/run"],
         names=("--output_dir=",), keep=("run",), setup=_copy_run),
    Case("predict --output_dir inside its --images folder", ["exporters.predict",
         "--model_path={D}/last.keras", "--images={T}/in", "--output_dir={T}/in/sub"],
         names=("lies inside the input",), keep=("in",), setup=_png),
    Case("predict over an earlier folder without --overwrite", call=_predict(),
         names=("exists",), keep=("out",)),
    Case("predict --overwrite over a folder with a user file", call=_predict("notes.txt", True),
         names=("notes.txt", "did not write"), keep=("out",)),
    Case("predict --overwrite over its own earlier folder", call=_predict(overwrite=True),
         expect="handled", check=lambda r: len(r["value"]) == 1),
    Case("convert --output inside the VOC root", ["keras_scb.data.convert", "--format=voc",
         "--voc_roots={T}/voc", "--splits=test", "--output={T}/voc/out"],
         names=("lies inside the input",), keep=("voc",), setup=_bccd, heavy=True),
    Case("convert --output=<annotations without .json>", ["keras_scb.data.convert",
         "--format=coco", "--coco_annotations={T}/annotations/instances_val.json",
         "--coco_images={T}/val", "--output={T}/annotations/instances_val"],
         names=("is the input",), keep=("annotations",), setup=_small_coco, heavy=True),
    Case("match_stats --output_dir inside the --data_dir", ["keras_scb.match_stats",
         "--dataset=voc", "--data_dir={T}/voc", "--train_split=test", "--max_images=2",
         "--augment_samples=0", "--output_dir={T}/voc/stats"],
         names=("lies inside the input",), keep=("voc",), setup=_bccd),
    Case("accuracy --output_json=its checkpoint", ["exporters.accuracy",
         "--checkpoint={T}/run/last.keras", "--output_json={T}/run/last.keras"],
         names=("is the input",), keep=("run",), setup=_copy_run, heavy=True),
    # --- one run folder, one recipe -----------------------------------------------------
    Case("train into a folder locked by a live process (pid 1)", ["keras_scb.train",
         "--model_dir={T}/run", *TRAIN, "--epochs=2"], names=("in use by process 1",),
         setup=_lock_with("1\n")),
    Case("train into a folder with a garbage run.lock (taken over)", ["keras_scb.train",
         "--model_dir={T}/run", *TRAIN], keep=(), setup=_lock_with("abc\n"), expect="handled",
         check=_complete),
    Case("resume with another --weighting", ["keras_scb.train", "--model_dir={T}/run", *TRAIN,
         "--epochs=2", "--weighting=inverse"], names=("--weighting=",),
         setup=_copy_run),
    Case("resume with another --anchors", ["keras_scb.train", "--model_dir={T}/run", *TRAIN,
         "--epochs=2", "--anchors=ssd300"], names=("--anchors=",),
         setup=_copy_run),
    Case("resume with another --width_multiplier", ["keras_scb.train", "--model_dir={T}/run",
         *TRAIN, "--epochs=2", "--width_multiplier=0.5"], names=("--width_multiplier=",),
         setup=_copy_run),
    Case("resume with another --neg_pos_ratio", ["keras_scb.train", "--model_dir={T}/run",
         *TRAIN, "--epochs=2", "--neg_pos_ratio=5"], names=("--neg_pos_ratio=",),
         setup=_copy_run),
    Case("resume a complete run with the same flags", ["keras_scb.train", "--model_dir={T}/run",
         *TRAIN], expect="handled", check=_complete, keep=("run",), setup=_copy_run),
    Case("resume with another --apply_to", ["keras_scb.train", "--model_dir={T}/run", *TRAIN,
         "--epochs=2", "--apply_to=both"], names=("--apply_to=",), setup=_copy_run),
    # --- fields of the files we read ------------------------------------------------------
    Case("state.json 'epoch' is the string '1'", call=_restore_with(epoch="1"),
         names=("state.json", "'epoch'")),
    Case("state.json 'epoch' is -1", call=_restore_with(epoch=-1), names=("state.json", "'epoch'")),
    Case("state.json 'weights' is ../../x.weights.h5",
         call=_restore_with(weights="../../x.weights.h5"), names=("state.json", "'weights'")),
    Case("state.json 'class_names' is a string", call=_restore_with(class_names="cat"),
         names=("state.json", "'class_names'")),
    Case("best.json 'value' is the string '0.5'", call=_best_json, names=("best.json", "'value'")),
    Case("TFRecord metadata num_records is '4'", call=_read_tfrecords_with(num_records="4"),
         names=("train.json", "'num_records'")),
    Case("TFRecord metadata files lead outside", call=_read_tfrecords_with(files=["../x.tfrecord"]),
         names=("train.json", "'files'")),
    Case("TFRecord metadata max_boxes is 0", call=_read_tfrecords_with(max_boxes=0),
         names=("train.json", "'max_boxes'")),
    Case("TFRecord metadata category_ids of another length",
         call=_read_tfrecords_with(category_ids=[1, 2, 3, 4]), names=("train.json", "'category_ids'")),
    Case("TFRecord metadata class_names is a string", call=_read_tfrecords_with(class_names="cat"),
         names=("train.json", "'class_names'")),
    Case("export metadata image_size is '300'", call=_export_metadata(image_size="300"),
         names=("keras_scb_export.json", "'image_size'")),
    Case("export metadata class_names is a string", call=_export_metadata(class_names="cat"),
         names=("keras_scb_export.json", "'class_names'")),
    Case("COCO image height 'abc'", call=_coco({"height": "abc"}),
         names=("instances.json", "malformed image entry")),
    Case("COCO image id 1.0 (a float)", call=_coco({"id": 1.0}),
         names=("instances.json", "'id' is 1.0")),
    Case("COCO iscrowd 2", call=_coco(annotation_fields={"iscrowd": 2}),
         names=("instances.json", "malformed iscrowd")),
    Case("COCO iscrowd null", call=_coco(annotation_fields={"iscrowd": None}),
         names=("instances.json", "malformed iscrowd")),
    Case("COCO iscrowd true (a JSON boolean)", call=_coco(annotation_fields={"iscrowd": True}),
         expect="handled", check=lambda r: r["value"] == [(1, True)]),
    Case("COCO repeated category id", call=_coco(repeat_category=True),
         names=("instances.json", "repeated category")),
    Case("VOC ImageSets entry with a backslash", call=_voc_entry("..\\secret"),
         names=("train.txt", "line 1")),
    Case("VOC ImageSets entry ..", call=_voc_entry(".."), names=("train.txt", "line 1")),
    Case("VOC ImageSets entry ../secret", call=_voc_entry("../secret"),
         names=("train.txt", "line 1")),
    Case("labels.txt of 5000 names vs a 3-name model", call=_labels(
        [f"n{k}" for k in range(5000)], ("a", "b", "c")), names=("5000 classes, not 3", "more")),
    Case("labels.txt repeating 2 names 20000 times", call=_labels(["a", "b"] * 20000, ("a",)),
         names=("repeated names",)),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--run_dir", help="a finished run folder to use (copied) instead of "
                        "training one")
    args = parser.parse_args()
    d = tempfile.mkdtemp(prefix="round2-run-")
    if args.run_dir:
        shutil.rmtree(d)
        shutil.copytree(args.run_dir, d)
    else:
        _train_run(d)
    rows = []
    for case in CASES:
        if case.heavy and not args.all:
            continue
        outcome, result, changed = run_case(case, d)
        rows.append({"case": case.name, "class": outcome, "error": result["error"][:300],
                     "changed": changed[:5]})
        print(f"{outcome:8s} {case.name}", flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

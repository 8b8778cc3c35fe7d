"""The keras-hub style detection task: one import, box dicts in, detections out, TF and JAX.

`keras_scb.models.task` (fit on box dicts, decoded predict), `keras_scb.box_formats`,
`keras_scb.decoding` (the ``keras.ops`` post-processing) and ``import keras_scb``
registering every Keras object the library saves. JAX runs in subprocesses
(``KERAS_BACKEND=jax``), one of them with the TensorFlow import blocked as on the
GPU machine (`benchmarks/gpu_check.block_tensorflow`).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import task_testing as tt
from export_testing import assert_same_detections
from keras_scb.box_formats import BOX_FORMATS, from_relative_corners, to_relative_corners

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
JAX = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{REPO}:{TESTS}"}


def run_jax(python_subprocess, code, **env):
    return python_subprocess(code, env={**JAX, **env})


# ------------------------------------------------------------------ box formats


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_every_bounding_box_format_round_trips(box_format):
    boxes = np.array([[[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]]], np.float32)
    converted = np.asarray(from_relative_corners(boxes, box_format, 64))
    np.testing.assert_allclose(
        np.asarray(to_relative_corners(converted, box_format, 64)), boxes, atol=1e-6
    )
    # The format's meaning, for the first box, in pixels of the 64 x 64 input.
    x0, y0, x1, y1 = 0.1 * 64, 0.2 * 64, 0.5 * 64, 0.9 * 64
    want = {
        "xyxy": [x0, y0, x1, y1], "yxyx": [y0, x0, y1, x1], "xywh": [x0, y0, x1 - x0, y1 - y0],
        "center_xywh": [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0],
        "center_yxhw": [(y0 + y1) / 2, (x0 + x1) / 2, y1 - y0, x1 - x0],
    }
    relative = box_format.startswith("rel_")
    expected = np.array(want[box_format.removeprefix("rel_")]) / (64 if relative else 1)
    np.testing.assert_allclose(converted[0, 0], expected, rtol=1e-6, atol=1e-5)


def test_bounding_box_format_is_checked_and_saved(tmp_path):
    from keras_scb.models import build_detector

    with pytest.raises(ValueError, match="bounding_box_format='xyxz' is not a Keras"):
        build_detector("mobilenetv2-ssdlite300", 3, bounding_box_format="xyxz")
    with pytest.raises(ValueError, match="bounding_box_format='XYXY'"):
        tt.toy_detector(bounding_box_format="XYXY")
    model = tt.toy_detector(bounding_box_format="center_xywh")
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").bounding_box_format == "center_xywh"


# ------------------------------------------------------------------ one import loads all

LOAD_ALL = """
import sys, keras, keras_scb
for path in sys.argv[1:]:
    model = keras.saving.load_model(path)
    print(type(model).__name__, type(getattr(model, "loss", None)).__name__)
"""


def _library_files(tmp_path):
    """A compiled detector checkpoint (SCB on device, the trainer's optimizer and
    schedule), a RefineDet one and two inference models (keras.ops and TF decoder)."""
    from keras_scb.optimizers import CoupledDecaySGD
    from keras_scb.postprocess import build_inference_model
    from keras_scb.schedules import WarmupStepDecay

    paths = [str(tmp_path / name) for name in ("ssd.keras", "refinedet.keras", "inference.keras",
                                               "inference_tf.keras")]
    ssd, refinedet = tt.toy_detector(), tt.toy_detector("refinedet")
    x, boxes, labels = tt.batch()
    schedule = WarmupStepDecay(0.01, boundaries=(10,), warmup_steps=2)
    ssd.compile(optimizer=CoupledDecaySGD(learning_rate=schedule, momentum=0.9),
                loss=tt.loss_for("scb_on_device"))
    refinedet.compile(optimizer="sgd", loss=tt.loss_for("refinedet"))
    for model in (ssd, refinedet):
        model.fit(x, tt.box_dict(boxes, labels, "xyxy"), epochs=1, verbose=0)
    ssd.save(paths[0])
    refinedet.save(paths[1])
    build_inference_model(ssd).save(paths[2])
    build_inference_model(ssd, extra_outputs=True).save(paths[3])
    return paths


def test_import_keras_scb_alone_loads_every_library_file(tmp_path):
    paths = _library_files(tmp_path)
    script = tmp_path / "load.py"
    script.write_text(LOAD_ALL)
    done = subprocess.run([sys.executable, str(script), *paths], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.split("\n")
    assert out[:2] == ["Detector MatchOnDevice", "Detector RefineDetLoss"], out
    assert out[2].startswith("Functional") and out[3].startswith("Functional"), out
    # Under JAX the keras.ops inference model loads and predicts too.
    jax = subprocess.run([sys.executable, "-c", LOAD_ALL + (
        "import numpy as np\n"
        "out = model.predict(np.zeros((1, 100, 80, 3), 'float32'), verbose=0)\n"
        "print(sorted(out), 'tensorflow' in sys.modules)\n"), paths[2]],
        capture_output=True, text=True, env=dict(os.environ, **JAX), cwd=str(tmp_path))
    assert jax.returncode == 0, jax.stderr[-3000:]
    assert jax.stdout.split("\n")[1] == (
        "['boxes', 'classes', 'num_detections', 'scores'] False"), jax.stdout
    # The TF post-processor (the exports' extra outputs) in a JAX model: a
    # clear error, not JAX's "'str' object has no attribute '_error_repr'".
    tf_decoder = subprocess.run([sys.executable, "-c", (
        "import numpy as np, task_testing as tt\n"
        "from keras_scb.postprocess import build_inference_model\n"
        "model = build_inference_model(tt.toy_detector(), extra_outputs=True)\n"
        "try:\n"
        "    model.predict(np.zeros((1, 64, 64, 3), 'float32'), verbose=0)\n"
        "except TypeError as error:\n"
        "    print(str(error))\n")],
        capture_output=True, text=True, env=dict(os.environ, **JAX), cwd=str(tmp_path))
    assert "PostProcessor runs TensorFlow ops" in tf_decoder.stdout, tf_decoder.stderr[-3000:]


@pytest.mark.slow
def test_import_keras_scb_alone_loads_the_training_cli_checkpoint(tmp_path):
    from test_train import assert_ok, run, train_command

    assert_ok(run(train_command(tmp_path, "--match_on=device")))
    script = tmp_path / "load.py"
    script.write_text(LOAD_ALL)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "last.keras")],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == "Detector MatchOnDevice", done.stdout


# ------------------------------------------------------------------ fit on box dicts

CASES = [("scb", "ssd"), ("multibox", "ssd"), ("scb_on_device", "ssd"), ("refinedet", "refinedet")]


def _assert_same_step(dict_loss, target_loss, difference, scale):
    assert abs(dict_loss - target_loss) <= 1e-5 * max(1.0, abs(target_loss))
    assert scale > 1e-3  # the step moved the weights
    assert difference <= 1e-5 * max(1.0, scale)


@pytest.mark.parametrize("loss_name,layout", CASES)
def test_box_dict_fit_equals_encoded_targets_tensorflow(loss_name, layout):
    _assert_same_step(*tt.box_dict_and_encoded_steps(loss_name, layout))


def test_box_dict_fit_equals_encoded_targets_jax(python_subprocess):
    # Both layouts; MultiBox and MatchOnDevice differ from SCB only in the loss
    # (tested under TF above), and each case costs two XLA compilations.
    cases = [CASES[0], CASES[-1]]
    out = run_jax(python_subprocess, (
        "import json, task_testing as tt\n"
        f"print(json.dumps([tt.box_dict_and_encoded_steps(l, o) for l, o in {cases!r}]))"
    ))
    results = json.loads(out.strip().splitlines()[-1])
    assert len(results) == len(cases)
    for result in results:
        _assert_same_step(*result)


def test_validation_pipeline_and_datasets_of_box_dicts_feed_fit():
    import tensorflow as tf

    from keras_scb.data import pipeline
    from keras_scb.data.synthetic import make_synthetic
    from keras_scb.validation import coco_evaluation_callback

    data = make_synthetic(8, seed=0, image_size=(64, 64), size_range=(10, 40),
                          objects_per_image=(1, 3))
    model = tt.toy_detector(bounding_box_format="rel_xyxy")
    model.compile(optimizer="sgd", loss=tt.loss_for("scb"))
    train = pipeline.training_pipeline(data, model, batch_size=4, augment=None)
    validation = pipeline.validation_pipeline(data, model, batch_size=4)
    history = model.fit(train, validation_data=validation, epochs=1, verbose=0,
                        callbacks=[coco_evaluation_callback(data, batch_size=4)])
    assert np.isfinite(history.history["val_loss"][0])
    assert 0.0 <= history.history["val_coco_AP"][0] <= 1.0  # pycocotools ran
    assert "val_voc07_mAP" in history.history
    # The same validation loss from the encoded targets of the same images.
    encoded = pipeline.validation_pipeline(data, model, batch_size=4, targets="ssd").map(
        lambda images, info: (images, info["targets"]))
    np.testing.assert_allclose(
        model.evaluate(encoded, verbose=0), history.history["val_loss"][0], rtol=1e-5)
    # A dataset of images and keras-hub box dicts.
    x, boxes, labels = tt.batch()
    boxed = tf.data.Dataset.from_tensor_slices((x, tt.box_dict(boxes, labels, "rel_xyxy")))
    assert np.isfinite(model.fit(boxed.batch(2), epochs=1, verbose=0).history["loss"][0])


@pytest.mark.parametrize("anchors", ["detector", "spec", "preset", "array"])
def test_pipelines_take_what_the_user_has(anchors):
    from keras_scb.anchors import PRESETS
    from keras_scb.data import pipeline
    from keras_scb.data.synthetic import make_synthetic

    model = tt.toy_detector()
    preset = sorted(PRESETS)[0]
    given, kwargs = {
        "detector": (model, {}), "spec": (model.anchor_spec, {}), "preset": (preset, {}),
        "array": (model.anchors, {"image_size": 64}),
    }[anchors]
    size = 64 if anchors != "preset" else PRESETS[preset].image_size
    data = make_synthetic(4, seed=0, image_size=(64, 64), size_range=(10, 40),
                          objects_per_image=(1, 3))
    images, targets = next(iter(pipeline.training_pipeline(
        data, given, batch_size=2, augment=None, **kwargs)))
    assert images.shape == (2, size, size, 3) and targets.shape[-1] == 6
    images, info = next(iter(pipeline.validation_pipeline(data, given, batch_size=2, **kwargs)))
    assert images.shape == (2, size, size, 3)
    if anchors == "array":
        with pytest.raises(ValueError, match="pass image_size"):
            pipeline.training_pipeline(data, model.anchors)


# ------------------------------------------------------------------ bad input


def test_bad_box_dicts_and_images_are_refused_before_training():
    model = tt.toy_detector()
    model.compile(optimizer="sgd", loss=tt.loss_for("scb"))
    x, boxes, labels = tt.batch()
    y = tt.box_dict(boxes, labels, "xyxy")
    before = [np.array(w) for w in model.trainable_weights]
    nan_boxes = y["boxes"].copy()
    nan_boxes[1, 0, 2] = np.nan
    bad = [
        ({"boxes": y["boxes"][..., :3], "labels": labels}, r"y\['boxes'\] must be \(batch, boxes, 4\)"),
        ({"boxes": y["boxes"][0], "labels": labels}, r"y\['boxes'\] must be \(batch, boxes, 4\)"),
        ({"boxes": y["boxes"], "labels": labels[:, :2]}, r"y\['labels'\] must be \(batch, boxes\)"),
        ({"boxes": y["boxes"], "labels": np.where(labels == 2, 3, labels)},
         r"y\['labels'\] must be -1 \(padding\) or 0..2; got \[3\]"),
        ({"boxes": y["boxes"], "labels": labels - 2}, r"must be -1 \(padding\) or 0..2"),
        ({"boxes": nan_boxes, "labels": labels}, r"y\['boxes'\] holds NaN or inf \(image 1"),
        ({"boxes": np.where(np.isnan(nan_boxes), np.inf, nan_boxes), "labels": labels},
         "holds NaN or inf"),
    ]
    for target, message in bad:
        with pytest.raises(ValueError, match=message):
            model.fit(x, target, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="validation_data"):
        model.fit(x, y, validation_data=(x, bad[3][0]), epochs=1, verbose=0)
    # Images of another size are refused, not resized (the inference model resizes).
    small = x[:, :48, :56]
    with pytest.raises(ValueError, match="x: images are 48x56 pixels but this detector takes 64x64"):
        model.fit(small, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="images are 48x56 pixels"):
        model.predict(small, verbose=0)
    with pytest.raises(ValueError, match="images are 48x56 pixels"):
        model.predict_raw(small, verbose=0)
    with pytest.raises(ValueError, match=r"y must be a dict with 'boxes' and 'labels'"):
        model.fit(x, {"bbox": boxes, "cls": labels}, epochs=1, verbose=0)
    # A tf.data dataset of box dicts: checked batch by batch, before its step.
    import tensorflow as tf

    for target, message in ((bad[5][0], r"y\['boxes'\] holds NaN or inf"),
                            (bad[3][0], r"labels\\?'\] must be -1 \(padding\) or 0..2")):
        dataset = tf.data.Dataset.from_tensor_slices((x, target)).batch(2)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            model.fit(dataset, epochs=1, verbose=0)
    for a, b in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(a, np.array(b))  # nothing was trained


# ------------------------------------------------------------------ predict


def test_keras_ops_decoder_equals_the_tf_postprocessor():
    """`DetectionDecoder` (keras.ops) and `PostProcessor` (TF NMS): the same
    detections as sets, both layouts, with more candidates than max_detections."""
    from keras_scb.anchors import get_anchors
    from keras_scb.decoding import DetectionDecoder
    from keras_scb.postprocess import PostProcessor

    num_anchors = len(get_anchors(tt.SPEC))
    rng = np.random.default_rng(3)
    for layout, depth in (("ssd", 4), ("refinedet", 10)):
        raw = rng.normal(0, 1, (3, num_anchors, depth + tt.NUM_CLASSES + 1)).astype("float32")
        raw[..., depth:] *= 3
        options = dict(max_detections=60, pre_nms_top_k=100, score_threshold=0.05)
        got = DetectionDecoder(tt.SPEC, layout, **options)(raw)
        want = PostProcessor(tt.SPEC, layout, **options)(raw)
        got, want = ({k: np.asarray(v) for k, v in d.items()} for d in (got, want))
        np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
        assert assert_same_detections(got, want, score_atol=1e-6, box_atol=1e-6,
                                      min_count=100) == want["num_detections"].sum()
        # Rows past num_detections are zeros, as PostProcessor's.
        n = got["num_detections"]
        past = np.arange(60)[None] >= n[:, None]
        assert not got["scores"][past].any() and not got["boxes"][past].any()


def _trained_checkpoint(path):
    """The toy SSD trained 30 steps on 64 px synthetic objects (box dicts)."""
    from keras_scb.data import pipeline
    from keras_scb.data.synthetic import make_synthetic

    data = make_synthetic(32, seed=0, image_size=(64, 64), size_range=(14, 40),
                          objects_per_image=(1, 2))
    model = tt.toy_detector(bounding_box_format="rel_xyxy")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=tt.loss_for("scb"))
    train = pipeline.training_pipeline(data, model, batch_size=8, augment=None, repeat=True,
                                       seed=0)
    model.fit(train, epochs=1, steps_per_epoch=30, verbose=0)
    model.save(path)
    images, _ = next(iter(pipeline.validation_pipeline(data, model, batch_size=4)))
    return model, images.numpy()


PREDICT = """
import sys, numpy as np, keras, keras_scb
model = keras.saving.load_model(sys.argv[1])
out = model.predict(np.load(sys.argv[2]), verbose=0)
np.savez(sys.argv[3], **out)
print("tensorflow" in sys.modules)
"""


def test_predict_under_jax_equals_tensorflow_on_a_trained_checkpoint(tmp_path):
    from keras_scb.postprocess import build_postprocessor

    model, images = _trained_checkpoint(tmp_path / "trained.keras")
    np.save(tmp_path / "images.npy", images)
    tf_out = model.predict(images, verbose=0)
    assert sorted(tf_out) == ["boxes", "confidence", "labels", "num_detections"]
    # Today's TF post-processing on the raw output: the same detections.
    reference = {k: np.asarray(v) for k, v in build_postprocessor(model)(
        model.predict_raw(images, verbose=0)).items()}
    assert reference["scores"][:, 0].min() > 0.3  # trained: confident detections
    as_library = lambda out: {"boxes": out["boxes"], "scores": out["confidence"],  # noqa: E731
                              "classes": out["labels"], "num_detections": out["num_detections"]}
    assert_same_detections(as_library(tf_out), reference, score_atol=1e-5, box_atol=1e-5)
    script = tmp_path / "predict.py"
    script.write_text(PREDICT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "trained.keras"),
         str(tmp_path / "images.npy"), str(tmp_path / "jax.npz")],
        capture_output=True, text=True, env=dict(os.environ, **JAX), cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "False"  # no TensorFlow under JAX
    jax_out = dict(np.load(tmp_path / "jax.npz"))
    matched = assert_same_detections(as_library(jax_out), reference, score_atol=1e-4)
    assert matched >= 0.95 * reference["num_detections"].sum()
    # keras-hub's padding past num_detections.
    n = jax_out["num_detections"]
    past = np.arange(jax_out["labels"].shape[1])[None] >= n[:, None]
    assert (jax_out["labels"][past] == -1).all() and (jax_out["confidence"][past] == -1).all()


def test_predict_returns_boxes_in_the_detector_format():
    model = tt.toy_detector(bounding_box_format="yxyx")
    x, _, _ = tt.batch()
    out = model.predict(x, verbose=0)
    model.bounding_box_format = "rel_xyxy"
    model.predict_function = None
    relative = model.predict(x, verbose=0)
    n = out["num_detections"][0]
    assert n > 0
    np.testing.assert_allclose(out["boxes"][0, :n], relative["boxes"][0, :n][:, [1, 0, 3, 2]] * 64,
                               atol=1e-4)
    assert model.predict_raw(x, verbose=0).shape == (4, len(model.anchors), 8)
    model.set_prediction_options(score_threshold=0.5, max_detections=7)
    fewer = model.predict(x, verbose=0)
    assert fewer["boxes"].shape == (4, 7, 4) and (fewer["confidence"][fewer["labels"] >= 0] > 0.5).all()


# ------------------------------------------------------------------ JAX without TensorFlow

NO_TENSORFLOW = """
import sys
sys.path.insert(0, "benchmarks")
import gpu_check
gpu_check.block_tensorflow()
import numpy as np, keras, keras_scb
import task_testing as tt
assert keras.backend.backend() == "jax"
model = tt.toy_detector(bounding_box_format="center_xywh")
x, boxes, labels = tt.batch()
model.compile(optimizer=keras.optimizers.SGD(0.01), loss=tt.loss_for("scb"))
history = model.fit(x, tt.box_dict(boxes, labels, "center_xywh"), epochs=2, verbose=0)
out = model.predict(x, verbose=0)
model.save(sys.argv[1])
loaded = keras.saving.load_model(sys.argv[1])
again = loaded.predict(x, verbose=0)
for key in out:
    np.testing.assert_allclose(again[key], out[key], atol=1e-5)
refinedet = tt.toy_detector("refinedet")
refinedet.compile(optimizer="sgd", loss=tt.loss_for("refinedet"))
refinedet.fit(x, tt.box_dict(boxes, labels, "xyxy"), epochs=1, verbose=0)
print(sorted(out), int(out["num_detections"].sum()) > 0, history.history["loss"],
      refinedet.predict(x, verbose=0)["boxes"].shape, "tensorflow" in sys.modules)
"""


def test_jax_without_tensorflow_builds_fits_predicts_saves_and_loads(tmp_path):
    script = tmp_path / "no_tf.py"
    script.write_text(NO_TENSORFLOW)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "m.keras")],
                          capture_output=True, text=True, env=dict(os.environ, **JAX), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("['boxes', 'confidence', 'labels', 'num_detections'] True [")
    assert line.endswith("(4, 200, 4) False"), line

"""Issue 25, silently wrong: each case now stops with an error naming the flag,
file or field, or is handled and said (a recorded recipe change, a counted cap).

Every test failed on the main branch of the issue: the resume went on with
another recipe or network, two processes shared a run folder, the out-of-range
flags trained or exported, the COCO/VOC fields were misread, the labels.txt
beside a .tflite won over its embedded label map, the box cap was silent.
Budget: ~30 s on 2 cores (the shared 1-step run, in-process refusals, tiny CLIs).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from round2_testing import contents, one_line_error, run_module, train_in_process

from keras_scb import fileio, run_folder
from keras_scb.data import records


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(tiny_run, folder)
    return folder


# --- resume with another recipe ---------------------------------------------------


@pytest.mark.parametrize("flag", ["--batch_size=4", "--loss=multibox", "--learning_rate=0.05",
                                  "--lr_schedule=cosine", "--optimizer=adamw"])
def test_resume_with_another_recipe_is_refused_naming_the_flag(run_copy, flag):
    before = contents(run_copy)
    name = flag[2:].split("=")[0]
    with pytest.raises(run_folder.RecipeChanged, match=f"another recipe: --{name}="):
        train_in_process(run_copy, flag, "--epochs=2")
    assert contents(run_copy) == before  # flags.json included


def test_resume_of_ssdlite300_as_ssdlite320_is_refused(run_copy):
    before = contents(run_copy)
    with pytest.raises(run_folder.RecipeChanged, match="another network: --model='mobilenetv2-ssdlite320'"):
        train_in_process(run_copy, "--model=mobilenetv2-ssdlite320", "--epochs=2")
    assert contents(run_copy) == before


def test_backup_state_records_its_network_and_refuses_another(tiny_run):
    # Without flags.json (an older run, or a library user), the backup itself says.
    from keras_scb.callbacks import EpochBackup
    from keras_scb.checkpoints import CheckpointError
    from keras_scb.models import build_detector

    state = json.loads((tiny_run / "backup" / "state.json").read_text())
    assert state["network"]["model"] == "mobilenetv2-ssdlite300"
    assert state["network"]["image_size"] == 300
    other = build_detector("mobilenetv2-ssdlite320", 3, width_multiplier=0.35,
                           backbone_weights=None)
    assert state["network"]["num_anchors"] != len(other.anchors)
    with pytest.raises(CheckpointError, match="another network: model 'mobilenetv2-ssdlite300'"):
        EpochBackup(str(tiny_run / "backup")).restore(other)


def test_allowed_recipe_change_is_recorded_in_the_history(tmp_path):
    flags = {"model": "m", "learning_rate": 0.1, "batch_size": 8, "epochs": 1}
    run_folder.record_flags(str(tmp_path), flags, 0, {})
    with pytest.raises(run_folder.RecipeChanged, match="--learning_rate=0.2 .the run's: 0.1."):
        run_folder.compare_recipe(str(tmp_path), {**flags, "learning_rate": 0.2}, False)
    changes = run_folder.compare_recipe(str(tmp_path), {**flags, "learning_rate": 0.2}, True)
    run_folder.record_flags(str(tmp_path), {**flags, "learning_rate": 0.2}, 1, changes)
    record = json.loads((tmp_path / "flags.json").read_text())
    assert record["flags"]["learning_rate"] == 0.2
    assert [h["epoch"] for h in record["history"]] == [0, 1]
    assert record["history"][1]["changes"] == {"learning_rate": {"from": 0.1, "to": 0.2}}
    # The epochs are free under the step schedule, recipe under cosine.
    assert run_folder.compare_recipe(str(tmp_path), {**flags, "learning_rate": 0.2,
                                                     "epochs": 5}, False) == {}


def test_complete_run_says_so_and_trains_nothing(run_copy, capsys):
    before = contents(run_copy)
    result = train_in_process(run_copy)
    assert result.history == {} and result.metrics is None
    assert "is complete: 1 of --epochs=1 epochs done; nothing to train" in capsys.readouterr().out
    assert contents(run_copy) == before


# --- two processes, one run folder --------------------------------------------------


def _holder(folder):
    """A live process holding ``folder``'s lock (ends when the test kills it)."""
    code = ("import sys, time; from keras_scb import run_folder; "
            f"run_folder.lock({str(folder)!r}); print('locked', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_training_into_a_busy_run_folder_stops(run_copy):
    child = _holder(run_copy)
    try:
        with pytest.raises(run_folder.RunFolderBusy, match=f"in use by process {child.pid}"):
            train_in_process(run_copy, "--epochs=2")
        result = run_module("keras_scb.evaluate", f"--checkpoint={run_copy / 'last.keras'}",
                            "--dataset=synthetic", f"--output_dir={run_copy / 'eval'}")
        one_line_error(result, f"process {child.pid} is training into")
    finally:
        child.kill()
        child.wait()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / run_folder.LOCK_FILE).write_text(f"{dead.pid}\n")
    run_folder.lock(str(tmp_path))
    try:
        assert f"taking over the lock of process {dead.pid}, which is gone" in capsys.readouterr().err
        assert (tmp_path / run_folder.LOCK_FILE).read_text().strip() == str(os.getpid())
    finally:
        run_folder.release(str(tmp_path))
    assert not (tmp_path / run_folder.LOCK_FILE).exists()


# --- numbers out of range -----------------------------------------------------------


@pytest.mark.parametrize("flag", ["--learning_rate=-0.01", "--learning_rate=0", "--warmup_steps=-5",
                                  "--alpha=-10", "--beta=-3", "--width_multiplier=0",
                                  "--steps_per_epoch=-1"])
def test_train_flag_out_of_range_is_a_one_line_error(tmp_path, flag):
    start = time.time()
    result = run_module("keras_scb.train", f"--model_dir={tmp_path}", flag)
    one_line_error(result, f"flag {flag.split('=')[0]}=", "must be")
    assert not os.listdir(tmp_path) and time.time() - start < 60


def test_predict_score_threshold_above_one_is_a_one_line_error(tmp_path):
    result = run_module("exporters.predict", f"--model_path={tmp_path}/m.tflite",
                        f"--images={tmp_path}", "--score_threshold=2")
    one_line_error(result, "flag --score_threshold=2.0: must be in [0, 1]")


def test_export_decoder_flags_out_of_range_are_one_line_errors(tmp_path):
    result = run_module("exporters.tflite", f"--checkpoint={tmp_path}/c.keras",
                        f"--output={tmp_path}/m.tflite", "--score_threshold=1.5")
    one_line_error(result, "flag --score_threshold=1.5: must be in [0, 1)")


# --- fields of the files we read -------------------------------------------------------


def _coco(tmp_path, images, annotations):
    from keras_scb.data import coco

    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "cat"}]}))
    return lambda **kw: coco.read_coco(str(path), str(folder), verify_images=False, **kw)


def _image(k):
    return {"id": k, "file_name": f"{k}.jpg", "height": 100, "width": 100}


def _box(k, image, iscrowd=0):
    return {"id": k, "image_id": image, "category_id": 1, "bbox": [10, 10, 20, 20],
            "area": 400, "iscrowd": iscrowd}


def test_coco_iscrowd_as_a_string_is_a_malformed_field_not_a_crowd_box(tmp_path):
    read = _coco(tmp_path, [_image(1)], [_box(1, 1, iscrowd="0"), _box(2, 1)])
    with pytest.raises(records.BadInputError, match="malformed iscrowd: annotation 1: '0', not 0 or 1"):
        read()
    data = read(bad_objects="skip")
    assert len(data.records[0].classes) == 1 and not data.records[0].difficult.any()


def test_coco_repeated_image_id_is_named_not_merged(tmp_path):
    second = {**_image(1), "file_name": "other.jpg"}
    read = _coco(tmp_path, [_image(1), second], [_box(1, 1)])
    with pytest.raises(records.BadInputError, match=r"repeated image id: image 1 \('1.jpg'\)"):
        read()
    assert len(read(bad_files="skip")) == 0  # neither image gets boxes it may not own


@pytest.mark.parametrize("entry", ["../outside", "/etc/passwd", "sub/../../x"])
def test_voc_imagesets_entry_leading_outside_the_root_is_refused(tmp_path, entry):
    from keras_scb.data import voc

    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text(f"a\n{entry}\n")
    with pytest.raises(records.BadInputError, match=r"train.txt, line 2: image name .* not a plain name"):
        voc.read_voc([str(tmp_path)], ["train"], ("cat",))


def _fake_tflite(path, names):
    """The TFLite identifier and a metadata zip with ``labels.txt`` (as exporters.metadata
    appends it); enough for the label-map reader, which does not run the model."""
    from exporters import metadata

    with open(path, "wb") as f:
        f.write(b"\0\0\0\0TFL3" + metadata._zip({"labels.txt": "".join(f"{n}\n" for n in names)}))


def test_tflite_labels_txt_that_disagrees_with_its_embedded_label_map_is_an_error(tmp_path):
    from exporters import common
    from keras_scb.label_map import LabelMapError

    model = tmp_path / "model.tflite"
    _fake_tflite(model, ["cat", "dog"])
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    with pytest.raises(LabelMapError, match="differ from the metadata of"):
        common.read_class_names(str(model))
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    assert common.read_class_names(str(model)) == ("cat", "dog")
    os.remove(tmp_path / "labels.txt")
    assert common.read_class_names(str(model)) == ("cat", "dog")  # the embedded map


# --- caps ------------------------------------------------------------------------------


def test_max_boxes_cap_counts_the_boxes_it_drops(caplog):
    from keras_scb.data import pipeline

    boxes = np.tile([[0.1, 0.1, 0.3, 0.3]], (150, 1)).astype(np.float32)
    record = records.make_record(b"", 0, "x", 32, 32, boxes, [0] * 150, [False] * 150)
    data = records.Dataset([record, record], ("cat",))
    with caplog.at_level("WARNING"):
        pipeline.training_pipeline(data, None, batch_size=1, image_size=32, targets="gt",
                                   max_boxes=100)
    assert "100 boxes of 2 images are dropped" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the default takes the split's most: nothing dropped
        pipeline.training_pipeline(data, None, batch_size=1, image_size=32, targets="gt")
    assert "dropped" not in caplog.text


def test_train_max_boxes_default_is_the_splits_most():
    from flag_testing import train_flags

    with train_flags() as values:
        assert values.max_boxes == 0


def test_fileio_abbreviates_long_lists():
    assert fileio.abbreviate(range(3)) == "[0, 1, 2]"
    assert fileio.abbreviate(range(100_000)).endswith("... (99980 more)]")

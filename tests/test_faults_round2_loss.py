"""Issue 25, data loss: no output over, around or inside an input; multi-file outputs whole.

Each test is one of the issue's data-loss cases; each failed on the main branch of
the issue (the output replaced the run folder, the checkpoint, the shards, the
predict folder, the run's metrics or its flags.json).
Budget: ~60 s on 2 cores (two exporter command lines, one evaluate, one
1-step training shared by the module).
"""

import json
import os
import shutil

import numpy as np
import pytest
from round2_testing import contents, one_line_error, run_module, train_in_process

from keras_scb import fileio
from keras_scb.data import tfrecord


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    """A copy of the 1-step run folder, with a metrics.json in eval/ as training writes it."""
    folder = tmp_path_factory.mktemp("loss") / "run"
    shutil.copytree(tiny_run, folder)
    os.makedirs(folder / "eval")
    fileio.write_json({"split": "test", "coco_AP": 0.1}, folder / "eval" / "metrics.json")
    return folder


def test_saved_model_output_that_contains_its_checkpoint_is_refused(run_dir):
    before = contents(run_dir)
    result = run_module("exporters.saved_model", f"--checkpoint={run_dir / 'last.keras'}",
                        f"--output={run_dir}", "--overwrite")
    one_line_error(result, f"--output={run_dir} contains the input")
    assert contents(run_dir) == before


def test_tflite_output_that_is_its_checkpoint_is_refused(run_dir):
    before = contents(run_dir)
    checkpoint = run_dir / "last.keras"
    result = run_module("exporters.tflite", f"--checkpoint={checkpoint}",
                        f"--output={checkpoint}", "--overwrite")
    one_line_error(result, "is the input")
    assert contents(run_dir) == before


def test_evaluate_does_not_replace_the_runs_own_metrics_without_overwrite(run_dir):
    before = contents(run_dir / "eval")
    result = run_module("keras_scb.evaluate", f"--checkpoint={run_dir / 'last.keras'}",
                        "--dataset=synthetic", "--val_split=train")
    one_line_error(result, "metrics.json exists", "--overwrite")
    assert contents(run_dir / "eval") == before


def test_resume_with_another_model_keeps_the_runs_flags_json(run_dir):
    from keras_scb.run_folder import RecipeChanged

    before = contents(run_dir)
    with pytest.raises(RecipeChanged, match=r"another network: --model='ssd300'"):
        train_in_process(run_dir, "--model=ssd300", "--epochs=2")
    assert contents(run_dir) == before


def _dataset(count, seed=0):
    from keras_scb.data import synthetic

    return synthetic.make_synthetic(count, seed=seed, image_size=(32, 32), size_range=(8, 16))


def test_convert_refuses_to_replace_without_overwrite_and_an_interrupted_rerun_keeps_the_old(
        tmp_path, monkeypatch):
    prefix = str(tmp_path / "train")
    tfrecord.write_tfrecords(_dataset(6), prefix, num_shards=3, progress=False)
    before = contents(tmp_path)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        tfrecord.write_tfrecords(_dataset(6, seed=1), prefix, num_shards=3, progress=False)

    calls = []
    original = tfrecord._example

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 4:  # inside the second shard
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(tfrecord, "_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tfrecord.write_tfrecords(_dataset(6, seed=1), prefix, num_shards=3, progress=False,
                                 overwrite=True)
    assert contents(tmp_path) == before  # the old shards and metadata, no temporaries
    assert tfrecord.read_tfrecords(prefix + ".json").num_records == 6


def test_convert_overwrite_replaces_its_own_shards_only(tmp_path):
    prefix = str(tmp_path / "train")
    tfrecord.write_tfrecords(_dataset(6), prefix, num_shards=3, progress=False)
    tfrecord.write_tfrecords(_dataset(4, seed=1), prefix, num_shards=2, progress=False,
                             overwrite=True)
    assert sorted(os.listdir(tmp_path)) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "train.json"]
    with open(tmp_path / "train-00009-of-00010.tfrecord", "wb") as f:
        f.write(b"someone else's")
    with pytest.raises(fileio.OutputError, match="never deletes files it did not write"):
        tfrecord.write_tfrecords(_dataset(4), prefix, num_shards=2, progress=False, overwrite=True)


class _Runner:
    """One box per image; raises KeyboardInterrupt on image ``interrupt_at`` (0-based)."""

    image_size = 32

    def __init__(self, interrupt_at=None):
        self.interrupt_at, self.calls = interrupt_at, 0

    def __call__(self, images):
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls += 1
        return {"detection_boxes": np.array([[[0.2, 0.2, 0.8, 0.8]]], np.float32),
                "detection_classes": np.zeros((1, 1), np.float32),
                "detection_scores": np.full((1, 1), 0.9, np.float32),
                "num_detections": np.ones(1, np.float32)}


def _images(folder, count):
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    for k in range(count):
        pixels = np.random.default_rng(k).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        with open(os.path.join(folder, f"im{k}.png"), "wb") as f:
            f.write(tf.io.encode_png(pixels).numpy())
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


def test_interrupted_predict_over_an_earlier_folder_leaves_it_whole(tmp_path):
    from exporters import predict

    out = tmp_path / "out"
    predict.predict(_Runner(), _images(tmp_path / "a", 3), str(out))
    before = contents(out)
    with pytest.raises(FileExistsError):
        predict.predict(_Runner(), _images(tmp_path / "b", 4), str(out))
    with pytest.raises(KeyboardInterrupt):
        predict.predict(_Runner(interrupt_at=2), _images(tmp_path / "b", 4), str(out),
                        overwrite=True)
    assert contents(out) == before
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "out"]  # no temporary left
    predict.predict(_Runner(), _images(tmp_path / "b", 4), str(out), overwrite=True)
    with open(out / "detections.json") as f:
        assert len(json.load(f)) == 4
    assert len([n for n in os.listdir(out) if n.endswith(".png")]) == 4


def test_predict_overwrite_never_deletes_files_it_did_not_write(tmp_path):
    from exporters import predict

    out = tmp_path / "out"
    predict.predict(_Runner(), _images(tmp_path / "a", 2), str(out))
    with open(out / "notes.txt", "w") as f:
        f.write("mine")
    with pytest.raises(fileio.OutputError, match=r"did not write: \['notes.txt'\]"):
        predict.predict(_Runner(), _images(tmp_path / "a", 2), str(out), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["inside", "around"])
def test_train_model_dir_inside_or_around_its_data_dir_is_refused(tmp_path, where):
    from keras_scb import train
    from keras_scb.config import TrainConfig

    root = tmp_path / "VOC"
    root.mkdir()
    model_dir = root / "run" if where == "inside" else tmp_path
    config = TrainConfig.from_args(["--dataset=voc", f"--data_dir={root}",
                                    f"--model_dir={model_dir}", "--backbone_weights=none"])
    with pytest.raises(fileio.OutputOverInput, match=f"--model_dir={model_dir} "):
        train._check_outputs(config)
    assert os.listdir(root) == []

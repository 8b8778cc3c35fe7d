"""Class names are compared wherever a model meets a dataset or a given list (issue 11, item 5).

The label map is fixed once per dataset (`tests/test_faults_data.py`), stored
with the model, and checked by `keras_scb.label_map.check_same` when training
resumes, when a checkpoint is evaluated or exported, and when ``--class_names``
or a ``labels.txt`` is given for it. Order matters: the same names in another
order are a mismatch. One tiny checkpoint, trained as in the issue, serves every
test.
"""

import concurrent.futures
import json
import logging
import os
import shutil
import zipfile

import pytest
from test_faults_training import TRAIN, assert_one_line_error, run_module

from exporters import common
from keras_scb import label_map
from keras_scb.callbacks import EpochBackup
from keras_scb.checkpoints import check_checkpoint_classes, checkpoint_class_names
from keras_scb.data.synthetic import SHAPES
from keras_scb.data.vendored import BCCD_CLASSES


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``runs/x`` of the issue: a shapes detector trained on ``--dataset=synthetic``."""
    run = tmp_path_factory.mktemp("labels") / "x"
    result = run_module("keras_scb.train", *TRAIN, f"--model_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _copy_run(run_dir, tmp_path):
    copy = tmp_path / "x"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture(scope="module")
def refusals(run_dir, tmp_path_factory):
    """The command lines that must refuse, run at once (each is mostly start-up).

    Returns:
        ``(folder, results)``: the folder their outputs would go to (holding a
        copy of the run, ``x``, to resume) and each one's `CompletedProcess`.
    """
    out = tmp_path_factory.mktemp("refusals")
    run = _copy_run(run_dir, out)
    not_synthetic = [a for a in TRAIN if not a.startswith("--dataset=")]
    commands = {
        # The reproduction: no metrics of a shapes model called RBC/WBC/Platelets.
        "evaluate": ["keras_scb.evaluate", f"--checkpoint={run_dir / 'last.keras'}",
                     "--dataset=bccd", "--val_split=test", f"--output_dir={out / 'eval'}"],
        # Same class count, other names: the backup would load, so the names must stop it.
        "resume": ["keras_scb.train", *not_synthetic, "--dataset=bccd", "--epochs=2",
                   f"--model_dir={run}"],
        "export": ["exporters.tflite", f"--checkpoint={run_dir / 'last.keras'}",
                   f"--output={out / 'm.tflite'}", f"--class_names={','.join(reversed(SHAPES))}"],
    }
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(run_module, *command) for name, command in commands.items()}
    return out, {name: future.result() for name, future in futures.items()}


def test_evaluating_a_shapes_model_on_bccd_names_both_label_maps(refusals):
    out, results = refusals
    assert_one_line_error(results["evaluate"], str(list(BCCD_CLASSES)), str(list(SHAPES)),
                          "last.keras")
    assert not (out / "eval").exists()


def test_resuming_a_run_on_another_label_map_is_refused(run_dir, refusals):
    out, results = refusals
    assert_one_line_error(results["resume"], str(list(BCCD_CLASSES)), str(list(SHAPES)),
                          str(out / "x"))
    # Nothing of the run was rewritten: it still resumes on its own classes.
    for name in ("labels.txt", "backup/state.json", "history.csv"):
        assert (out / "x" / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_exporting_with_other_class_names_is_refused_before_conversion(refusals):
    out, results = refusals
    assert_one_line_error(results["export"], str(list(reversed(SHAPES))), str(list(SHAPES)))
    assert not (out / "m.tflite").exists()
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_a_backup_restores_only_into_a_model_of_its_class_names(tmp_path):
    """`EpochBackup` records the model's label map and checks it on `restore`."""
    import keras

    def model(names):
        inputs = keras.Input((3,))
        net = keras.Model(inputs, keras.layers.Dense(len(names))(inputs))
        net.compile(optimizer="sgd", loss="mse")
        net.class_names = names
        return net

    backup = EpochBackup(str(tmp_path / "backup"))
    backup.set_model(model(("cat", "dog")))
    backup.on_epoch_end(0, {"loss": 1.0})
    assert json.loads((tmp_path / "backup" / "state.json").read_text())["class_names"] == ["cat", "dog"]
    assert EpochBackup(str(tmp_path / "backup")).restore(model(("cat", "dog"))) == 1
    with pytest.raises(label_map.LabelMapError, match=r"\['dog', 'cat'\].*\['cat', 'dog'\].*another order"):
        EpochBackup(str(tmp_path / "backup")).restore(model(("dog", "cat")))


# Label maps that are not the model's: another order, a misspelling, a class short.
WRONG = {
    "order": (SHAPES[1], SHAPES[0], SHAPES[2]),
    "spelling": (SHAPES[0].capitalize(), *SHAPES[1:]),
    "count": SHAPES[:2],
}


@pytest.fixture(scope="module")
def detector(run_dir):
    from keras_scb.checkpoints import load_checkpoint

    return load_checkpoint(run_dir / "last.keras")


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_given_class_names_must_be_the_models_in_order(run_dir, detector, kind):
    """``--class_names`` of export/predict (`read_class_names`) and an export's names."""
    checkpoint = run_dir / "last.keras"
    assert common.read_class_names(checkpoint) == SHAPES
    names = str(list(WRONG[kind])).replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(label_map.LabelMapError, match=names):
        common.read_class_names(checkpoint, ",".join(WRONG[kind]))
    with pytest.raises(label_map.LabelMapError, match=names):
        common.export_class_names(detector, WRONG[kind])
    with pytest.raises(label_map.LabelMapError, match=names):
        check_checkpoint_classes(checkpoint, len(SHAPES), WRONG[kind], "the split")


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_a_labels_file_beside_a_checkpoint_must_match_its_stored_names(run_dir, tmp_path, kind):
    run = _copy_run(run_dir, tmp_path)
    (run / "labels.txt").write_text("".join(f"{name}\n" for name in WRONG[kind]))
    for check in (checkpoint_class_names, common.read_class_names):
        with pytest.raises(label_map.LabelMapError, match=r"labels\.txt.*last\.keras"):
            check(run / "last.keras")


def _without_stored_names(checkpoint, path):
    """A copy of ``checkpoint`` as written before the class names were stored."""
    with zipfile.ZipFile(checkpoint) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"].pop("class_names")
                data = json.dumps(config)
            target.writestr(item, data)
    return path


def test_an_old_checkpoint_without_names_is_checked_by_labels_file_else_by_count(
    run_dir, tmp_path, caplog
):
    """Documented choice (`check_checkpoint_classes`): its ``labels.txt``, else the
    class count with a warning; a count mismatch is still an error."""
    old = _without_stored_names(run_dir / "last.keras", tmp_path / "old.keras")
    assert checkpoint_class_names(old) is None
    with caplog.at_level(logging.WARNING):
        check_checkpoint_classes(old, len(SHAPES), BCCD_CLASSES, "--dataset=bccd split test")
    assert "only the class count" in caplog.text
    with pytest.raises(label_map.LabelMapError, match="predicts 3"):
        check_checkpoint_classes(old, len(SHAPES), BCCD_CLASSES[:2], "the split")
    shutil.copy(run_dir / "labels.txt", tmp_path / "labels.txt")
    with pytest.raises(label_map.LabelMapError, match=r"\['RBC', 'WBC', 'Platelets'\]"):
        check_checkpoint_classes(old, len(SHAPES), BCCD_CLASSES, "--dataset=bccd split test")

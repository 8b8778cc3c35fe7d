"""`keras_scb.config.TrainConfig`: flagfiles, round trips, checks, and `train(config)`."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest

from keras_scb.config import (
    DataConfig,
    LossConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
    define_flags,
)
from keras_scb.data.augment import AugmentConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.cfg")))


@pytest.fixture(autouse=True)
def _at_the_root(monkeypatch):
    monkeypatch.chdir(REPO)  # nested flagfile paths are relative to the root


def test_the_configs_are_there():
    assert len(CONFIGS) >= 23, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(c)[:-4] for c in CONFIGS])
def test_every_shipped_config_parses_and_round_trips(path, tmp_path):
    from absl import flags

    from keras_scb.anchors import PRESETS
    from keras_scb.models import available_detectors

    config = TrainConfig.from_flagfile(path)
    assert config.model.model in available_detectors() and config.model.anchors in (None, *PRESETS)
    assert config.runtime.model_dir == f"runs/{os.path.basename(path)[:-4]}"
    # The values are the command line's: the flagfile parsed by absl into fresh flags.
    parsed = flags.FlagValues()
    define_flags(parsed)
    parsed(["train", f"--flagfile={path}"])
    assert TrainConfig.from_flag_values(
        {name: parsed[name].value for name in config.to_flag_values()}) == config
    assert TrainConfig.from_flag_values(config.to_flag_values()) == config
    config.to_json(str(tmp_path / "config.json"))
    assert TrainConfig.from_json(str(tmp_path / "config.json")) == config
    config.to_flagfile(str(tmp_path / "again.cfg"))
    assert TrainConfig.from_flagfile(str(tmp_path / "again.cfg")) == config


def test_overrides_by_flag_name():
    config = TrainConfig.from_flagfile("configs/quickstart.cfg", epochs=1, model_dir="/tmp/x",
                                       class_weights="1,2,3", train_split=["a", "b"])
    assert (config.schedule.epochs, config.runtime.model_dir) == (1, "/tmp/x")
    assert config.loss.class_weights == (1.0, 2.0, 3.0)
    assert config.data.train_split == ("a", "b")
    assert config.schedule.lr_schedule == "cosine"  # the rest is the flagfile's
    assert config.replace(epochs=3).schedule.epochs == 3
    assert config.replace(max_expand=3).augmentation.max_expand == 3
    with pytest.raises(ValueError, match=r"^--epoch is not a flag of keras_scb.train.$"):
        TrainConfig.from_flagfile("configs/quickstart.cfg", epoch=1)


def test_defaults_are_the_flag_defaults():
    config = TrainConfig(runtime=RuntimeConfig(model_dir="runs/x"))
    assert config == TrainConfig.from_args(["--model_dir=runs/x"])
    assert config.augmentation == AugmentConfig()


@pytest.mark.parametrize("make,message", [
    (lambda: TrainConfig(), "--model_dir is required."),
    (lambda: ScheduleConfig(batch_size=0), "--batch_size must be positive; got 0."),
    (lambda: ScheduleConfig(epochs=1.5), "--epochs must be an integer; got 1.5."),
    (lambda: ScheduleConfig(lr_schedule="cosine", lr_decay_steps=(5,)),
     "--lr_decay_steps belongs to --lr_schedule=step, not cosine."),
    (lambda: LossConfig(weighting="scbb"), "--weighting must be one of uniform, "),
    (lambda: LossConfig(class_weights="1,x,2"), "--class_weights=1,x,2: not a list of numbers."),
    (lambda: LossConfig(class_weights=(1, -1)), "--class_weights=1,-1: need finite numbers >= 0."),
    (lambda: DataConfig(dataset="imagenet"), "--dataset must be one of bccd, "),
    (lambda: TrainConfig.from_args(["--model_dir=x", "--model=ssd301"]),
     "--model='ssd301' is not a detector"),
    (lambda: TrainConfig.from_args(["--model_dir=x", "--model=refinedet320"]),
     "--model=refinedet320 trains with --loss=refinedet."),
    (lambda: TrainConfig.from_args(["--model_dir=x", "--loss=refinedet"]),
     "--loss=refinedet needs a RefineDet --model"),
    (lambda: TrainConfig.from_args(["--model_dir=x", "--max_expand=0.5"]),
     "--max_expand must be >= 1; got 0.5."),
    (lambda: TrainConfig.from_args(["--model_dir=x", "--epochs=x"]), "--epochs=x: invalid"),
    (lambda: TrainConfig.from_flagfile("configs/nonexistent.cfg"), "configs/nonexistent.cfg"),
    (lambda: TrainConfig.from_dict({"schedule": {"epoch": 1}}),
     "schedule.epoch is not a field of ScheduleConfig."),
])
def test_a_bad_setting_is_one_line_naming_its_flag(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_dataset_checks_come_with_the_classes():
    config = TrainConfig.from_args(["--model_dir=x", "--class_weights=1,2", "--num_classes=3"])
    config.replace(class_weights="").check_classes(("a", "b", "c"))
    with pytest.raises(ValueError, match=r"--class_weights=1,2: need 3 finite numbers >= 0, "
                                         r"one per class \['a', 'b', 'c'\]"):
        config.check_classes(("a", "b", "c"))
    with pytest.raises(ValueError, match="--num_classes=3 but --dataset=bccd has 2 classes"):
        config.check_classes(("a", "b"))


def test_settings_without_a_flag_refuse_the_flagfile_but_keep_json(tmp_path):
    config = TrainConfig(runtime=RuntimeConfig(model_dir="x"),
                         augmentation=AugmentConfig(min_ious=(None, 0.5)))
    with pytest.raises(ValueError, match="augmentation.min_ious has no flag"):
        config.to_flagfile(str(tmp_path / "x.cfg"))
    assert not (tmp_path / "x.cfg").exists()
    config.to_json(str(tmp_path / "x.json"))
    assert TrainConfig.from_json(str(tmp_path / "x.json")) == config


def test_config_is_frozen():
    config = TrainConfig(runtime=RuntimeConfig(model_dir="x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.schedule.epochs = 2


# The quickstart recipe, shrunk to seconds: 2 steps of 2 images, a 0.35-wide backbone.
QUICK = dict(epochs=1, steps_per_epoch=2, batch_size=2, width_multiplier=0.35,
             backbone_weights="none", final_eval=False, verbose=2)


def test_quickstart_trains_in_process_with_the_flags_json_of_the_command_line(tmp_path):
    """``train(TrainConfig.from_flagfile(...))`` trains and records the same flags in
    ``flags.json`` as the command line with the same flags; the command line on the
    finished run says it is complete and changes nothing."""
    from keras_scb.train import train

    def command_line(model_dir):
        return subprocess.run(
            [sys.executable, "-m", "keras_scb.train", "--flagfile=configs/quickstart.cfg",
             f"--model_dir={model_dir}",
             *(f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in QUICK.items())],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO),
        )

    run = tmp_path / "run"
    result = train(TrainConfig.from_flagfile("configs/quickstart.cfg", model_dir=str(run), **QUICK))
    assert result.model_dir == str(run) and result.metrics is None
    assert os.path.exists(result.last_checkpoint) and result.best_checkpoint is None
    assert len(result.history["loss"]) == 1
    record = json.loads((run / "flags.json").read_text())
    ours = record["flags"]
    assert (ours["model_dir"], ours["class_weights"], ours["max_expand"], ours["epochs"]) == (
        str(run), ["0.74", "2.46", "2.5"], 2.0, 1)
    assert [start["epoch"] for start in record["history"]] == [0]

    other = tmp_path / "cli"
    cli = command_line(other)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert json.loads((other / "flags.json").read_text())["flags"] == {
        **ours, "model_dir": str(other)}

    finished = command_line(run)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "is complete" in finished.stdout
    assert json.loads((run / "flags.json").read_text()) == record
    with open(run / "history.csv") as f:
        assert len(f.read().splitlines()) == 2  # the header and the one epoch: nothing retrained

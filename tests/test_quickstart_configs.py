"""The quickstart configs: the baseline is the SCB recipe with only the loss changed."""

import os

from keras_scb.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parsed(config):
    return TrainConfig.from_flagfile(f"configs/{config}")


def test_baseline_differs_from_the_quickstart_only_in_loss(monkeypatch):
    monkeypatch.chdir(REPO)  # the nested flagfile path is relative to the root
    scb_config, baseline_config = parsed("quickstart.cfg"), parsed("quickstart_baseline.cfg")
    scb, baseline = scb_config.to_flag_values(), baseline_config.to_flag_values()
    differ = {k for k in scb if scb[k] != baseline[k]}
    assert differ == {"loss", "model_dir"}
    assert (scb["loss"], baseline["loss"]) == ("scb", "multibox")
    assert baseline_config.loss.class_weights == (0.74, 2.46, 2.50)

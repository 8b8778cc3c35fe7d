"""The quickstart configs: the baseline is the SCB recipe with only the loss changed."""

import os

from flag_testing import train_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parsed(config):
    with train_flags(f"--flagfile=configs/{config}") as parsed_flags:
        return parsed_flags.flag_values_dict()


def test_baseline_differs_from_the_quickstart_only_in_loss(monkeypatch):
    monkeypatch.chdir(REPO)  # the nested flagfile path is relative to the root
    scb, baseline = parsed("quickstart.cfg"), parsed("quickstart_baseline.cfg")
    differ = {k for k in scb if scb[k] != baseline[k]}
    assert differ == {"loss", "model_dir"}
    assert (scb["loss"], baseline["loss"]) == ("scb", "multibox")
    assert baseline["class_weights"] == ["0.74", "2.46", "2.50"]

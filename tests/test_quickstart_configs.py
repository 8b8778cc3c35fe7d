"""The quickstart configs: the baseline is the SCB recipe with only the loss changed."""

import os

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parsed(config):
    from keras_scb import train  # noqa: F401  (defines the flags)

    flags.FLAGS(["train", f"--flagfile=configs/{config}"])
    try:
        return flags.FLAGS.flag_values_dict()
    finally:
        flags.FLAGS.unparse_flags()


def test_baseline_differs_from_the_quickstart_only_in_loss(monkeypatch):
    monkeypatch.chdir(REPO)  # the nested flagfile path is relative to the root
    scb, baseline = parsed("quickstart.cfg"), parsed("quickstart_baseline.cfg")
    differ = {k for k in scb if scb[k] != baseline[k]}
    assert differ == {"loss", "model_dir"}
    assert (scb["loss"], baseline["loss"]) == ("scb", "multibox")
    assert baseline["class_weights"] == ["0.74", "2.46", "2.50"]

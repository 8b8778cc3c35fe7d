"""Where the vendored datasets are found: the checkout, $KERAS_SCB_DATA, a wheel's data files."""

import os
import site
import sys

import pytest

from keras_scb.data import vendored


@pytest.fixture
def no_checkout(tmp_path, monkeypatch):
    """As from an installed wheel: no data/ beside the package, nothing installed yet."""
    package = tmp_path / "site-packages" / "keras_scb" / "data"
    package.mkdir(parents=True)
    monkeypatch.setattr(vendored, "__file__", str(package / "vendored.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(site, "USER_BASE", str(tmp_path / "user"))
    monkeypatch.delenv(vendored.DATA_ENV, raising=False)
    return tmp_path


def test_the_checkout_data_is_found():
    root = vendored.bccd_root()
    assert os.path.isfile(os.path.join(root, "ImageSets", "Main", "test.txt"))


def test_missing_data_is_a_clear_error(no_checkout):
    with pytest.raises(FileNotFoundError, match=r"vendored dataset 'bccd' not found in .*KERAS_SCB_DATA"):
        vendored.bccd_root()


def test_installed_data_files_are_found(no_checkout):
    installed = no_checkout / "venv" / vendored.INSTALLED_DATA / "bccd"
    installed.mkdir(parents=True)
    assert vendored.bccd_root() == str(installed)
    with pytest.raises(FileNotFoundError, match="coco2017-cc-subset"):
        vendored.coco_subset_root()  # not in the wheel


def test_environment_variable_comes_first(no_checkout, monkeypatch):
    (no_checkout / "venv" / vendored.INSTALLED_DATA / "bccd").mkdir(parents=True)
    mine = no_checkout / "mine"
    (mine / "bccd").mkdir(parents=True)
    monkeypatch.setenv(vendored.DATA_ENV, str(mine))
    assert vendored.bccd_root() == str(mine / "bccd")

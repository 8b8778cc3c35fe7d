"""The small real datasets vendored in the repository's top-level ``data/`` folder.

Each is found (`dataset_root`) under ``$KERAS_SCB_DATA`` if that is set; else in
the checkout's ``data/`` (an editable install, or the source tree on the path);
else in ``<prefix>/share/keras-scb/``, where the wheel installs BCCD (the
quickstart's data, 10 MB; the 17 MB COCO subset stays out of the wheel).
"""

import os
import site
import sys
from typing import Any, List, Sequence, Union

from keras_scb.data import coco, records, voc

# BCCD class ids, most to least frequent. Platelets are mostly < 32x32 px at 300x300.
BCCD_CLASSES = ("RBC", "WBC", "Platelets")
# Set to a folder holding ``bccd/`` (and ``coco2017-cc-subset/``) to use it first.
DATA_ENV = "KERAS_SCB_DATA"
# The wheel's data files (pyproject.toml, ``[tool.setuptools.data-files]``), below a prefix.
INSTALLED_DATA = os.path.join("share", "keras-scb")


def data_dirs() -> List[str]:
    """The folders searched for a vendored dataset, first match wins."""
    checkout = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "data")
    candidates = [os.environ.get(DATA_ENV), checkout]
    candidates += [os.path.join(prefix, INSTALLED_DATA) for prefix in (sys.prefix, site.USER_BASE)]
    return [os.path.normpath(c) for c in candidates if c]


def dataset_root(name: str) -> str:
    """The folder of the vendored dataset ``name`` (``bccd``, ``coco2017-cc-subset``).

    Raises:
        FileNotFoundError: in none of `data_dirs`; the message names them.
    """
    folders = data_dirs()
    for folder in folders:
        if os.path.isdir(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(
        f"vendored dataset {name!r} not found in {', '.join(folders)}: set {DATA_ENV} to a "
        "folder that holds it (the repository's data/), or install keras-scb from a "
        "checkout or its wheel (which ships bccd only)."
    )


def bccd_root() -> str:
    """VOC-style root of BCCD (MIT): 364 images, splits train / val / trainval / test."""
    return dataset_root("bccd")


def coco_subset_root() -> str:
    """Root of the CC-licensed COCO 2017 subset: ``train2017/``, ``val2017/``, ``annotations/``."""
    return dataset_root("coco2017-cc-subset")


def load_bccd(splits: Union[str, Sequence[str]] = "trainval", **kwargs: Any) -> records.Dataset:
    """BCCD as a `Dataset` with classes `BCCD_CLASSES`; kwargs go to `read_voc`."""
    return voc.read_voc(bccd_root(), splits, BCCD_CLASSES, **kwargs)


def load_coco_subset(split: str = "val2017", **kwargs: Any) -> records.Dataset:
    """The COCO subset's ``split`` as a `Dataset` (80 COCO classes); kwargs go to `read_coco`."""
    root = coco_subset_root()
    return coco.read_coco(
        os.path.join(root, "annotations", f"instances_{split}.json"),
        os.path.join(root, split),
        **kwargs,
    )

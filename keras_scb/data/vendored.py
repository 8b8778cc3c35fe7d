"""The small real datasets vendored in the repository's top-level ``data/`` folder.

The package is installed editable, so they are found relative to this file.
"""

import os
from typing import Any, Sequence, Union

from keras_scb.data import coco, records, voc

# BCCD class ids, most to least frequent. Platelets are mostly < 32x32 px at 300x300.
BCCD_CLASSES = ("RBC", "WBC", "Platelets")


def data_dir() -> str:
    """The repository's ``data/`` folder."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "data")
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path}: vendored data folder not found; keras_scb must be installed "
            "editable (pip install -e .) from a full checkout."
        )
    return path


def bccd_root() -> str:
    """VOC-style root of BCCD (MIT): 364 images, splits train / val / trainval / test."""
    return os.path.join(data_dir(), "bccd")


def coco_subset_root() -> str:
    """Root of the CC-licensed COCO 2017 subset: ``train2017/``, ``val2017/``, ``annotations/``."""
    return os.path.join(data_dir(), "coco2017-cc-subset")


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

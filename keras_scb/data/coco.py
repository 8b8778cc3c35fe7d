"""COCO-format datasets: an ``instances_*.json`` file and an image folder.

Category ids (sparse: 1..90 for COCO's 80 classes) map to contiguous class ids
``0..C-1`` in increasing category-id order; `Dataset.category_ids` maps back, for
writing results. ``iscrowd`` boxes are either kept flagged ``difficult`` (the
default, ``crowd="ignore"``: left out of training targets and, as ignore regions,
out of evaluation) or dropped (``crowd="drop"``); dropping is a choice, not an
issue, so it is not counted in `Dataset.issues`. Each object keeps its annotation
``area`` (`Record.areas`): COCO's AP_S/M/L bin by it, not by the box.
"""

import collections
import contextlib
import io
import json
import math
import os
import shutil
from typing import Tuple

import numpy as np

from keras_scb.data import records as records_lib
from keras_scb.fileio import short_repr, write_json

CROWD_POLICIES = ("ignore", "drop")


def _not_coco(annotation_file, problem):
    return records_lib.BadInputError(f"{annotation_file}: not a COCO instances file ({problem})")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_categories(annotation_file, categories):
    """Every category is ``{"id": int, "name": str}``, ids and names unique."""
    for category in categories:
        if not (
            isinstance(category, dict) and isinstance(category.get("id"), int)
            and not isinstance(category.get("id"), bool) and isinstance(category.get("name"), str)
        ):
            raise _not_coco(annotation_file, f"category {category!r} needs an int id and a name")
    for key in ("id", "name"):
        values = [c[key] for c in categories]
        if len(set(values)) != len(values):
            raise _not_coco(annotation_file, f"repeated category {key}s {sorted(values)}")


def _load(annotation_file):
    from pycocotools.coco import COCO

    try:
        with open(annotation_file, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise records_lib.BadInputError(f"{annotation_file}: malformed JSON: {error}") from None
    if not isinstance(content, dict):
        raise _not_coco(annotation_file, f"the top level is a {type(content).__name__}")
    # A file without "annotations" (an image-info file) would train on no boxes.
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise _not_coco(annotation_file, f"no {key!r} list")
    _check_categories(annotation_file, content["categories"])
    coco = COCO()
    coco.dataset = content
    try:
        # pycocotools prints progress to stdout; keep test and CLI output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError, AttributeError) as error:
        raise _not_coco(annotation_file, f"{type(error).__name__}: {error}") from None
    return coco


def _object(annotation, category_index, crowd, path, issues):
    """Returns ``(class_id, is_crowd, pixel corners, area)``, or ``None`` to drop it.

    ``area`` is the annotation's (pycocotools bins AP_S/M/L by it), else the box's.
    """
    flag = annotation.get("iscrowd", 0)
    if flag not in (0, 1) or not isinstance(flag, (int, bool)):  # "0" would be a crowd box
        issues.bad_object(path, "malformed iscrowd",
                          f"annotation {annotation.get('id')}: {flag!r}, not 0 or 1")
        return None
    is_crowd = bool(flag)
    if is_crowd and crowd == "drop":
        return None
    category = annotation.get("category_id")
    if not isinstance(category, int) or category not in category_index:
        issues.bad_object(path, "unknown category", f"annotation {annotation.get('id')}: {category!r}")
        return None
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        issues.bad_object(path, "malformed box", f"annotation {annotation.get('id')}: {bbox!r}")
        return None
    x, y, w, h = (float(v) for v in bbox)
    area = annotation.get("area")
    if area is None:
        # Finite when the box is; a non-finite box is reported as such later.
        area = w * h
    elif not (_is_number(area) and math.isfinite(area) and area >= 0):
        issues.bad_object(path, "malformed area", f"annotation {annotation.get('id')}: {area!r}")
        return None
    return category_index[category], is_crowd, [x, y, x + w, y + h], float(area)


def _unsafe_file_name(file_name):
    """Why ``file_name`` may not be joined to the image folder, or ``None``."""
    if not isinstance(file_name, str) or not file_name:
        return f"{file_name!r} is not a file name"
    try:
        file_name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{file_name!r} is not valid Unicode"
    if "\0" in file_name:
        return f"{file_name!r} holds a NUL character"
    if os.path.isabs(file_name) or ".." in file_name.replace("\\", "/").split("/"):
        return f"{file_name!r} leads outside the image folder"
    return None


def read_coco(
    annotation_file: str,
    image_dir: str,
    *,
    crowd: str = "ignore",
    bad_files: str = "raise",
    bad_objects: str = "raise",
    verify_images: bool = True,
) -> records_lib.Dataset:
    """Reads a COCO instances file through pycocotools.

    Args:
        annotation_file: path of the JSON.
        image_dir: folder holding each image's ``file_name``.
        crowd: ``"ignore"`` keeps ``iscrowd`` boxes flagged ``difficult``;
            ``"drop"`` leaves them out.
        bad_files, bad_objects: ``"raise"`` or ``"skip"`` (see `records`). A JSON
            that does not parse or lacks the ``images``, ``annotations`` or
            ``categories`` list always raises. An image entry without a positive
            size, or whose ``file_name`` is absolute or climbs out of
            ``image_dir`` (``..``), is a bad file; images may be JPEG, PNG, ...
        verify_images: check that every image exists and decodes.

    Returns:
        `Dataset` in the JSON's image order, ``image_id`` the COCO id, and
        ``category_ids`` set.
    """
    if crowd not in CROWD_POLICIES:
        raise ValueError(f"crowd must be one of {CROWD_POLICIES}; got {crowd!r}.")
    issues = records_lib.IssueLog(bad_files, bad_objects)
    coco = _load(annotation_file)
    categories = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    category_index = {c["id"]: k for k, c in enumerate(categories)}
    image_ids = {image.get("id") for image in coco.dataset["images"]}
    for annotation in coco.dataset["annotations"]:
        if annotation.get("image_id") not in image_ids:
            issues.bad_object(
                annotation_file, "annotation of an unknown image",
                f"annotation {annotation.get('id')}: image {annotation.get('image_id')!r}",
            )

    entries = collections.Counter(
        image.get("id") for image in coco.dataset["images"] if isinstance(image, dict)
        and isinstance(image.get("id"), int)
    )
    records = []
    for image in coco.dataset["images"]:
        try:
            height, width = int(image["height"]), int(image["width"])
            file_name, image_id = image["file_name"], image["id"]
            if isinstance(image_id, bool) or not isinstance(image_id, int):
                raise TypeError(f"'id' is {image_id!r}, not an int")
            if not all(_is_number(image[key]) for key in ("height", "width")):
                raise TypeError("'height' and 'width' must be numbers")
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            issues.bad_file(annotation_file, "malformed image entry",
                            f"{short_repr(image)}: {error}")
            continue
        if entries[image_id] > 1:  # pycocotools would pool their boxes
            issues.bad_file(
                annotation_file, "repeated image id",
                f"image {image_id} ({file_name!r}) is one of {entries[image_id]} image entries "
                "with that id; their annotations cannot be told apart",
            )
            continue
        problem = records_lib.image_size_problem(height, width)
        if problem:
            issues.bad_file(annotation_file, "malformed image entry", f"image {image_id}: {problem}")
            continue
        unsafe = _unsafe_file_name(file_name)
        if unsafe:
            issues.bad_file(annotation_file, "unsafe file_name", f"image {image_id}: {unsafe}")
            continue
        objects = [
            _object(a, category_index, crowd, annotation_file, issues)
            for a in coco.imgToAnns.get(image_id, [])
        ]
        objects = [o for o in objects if o is not None]
        boxes, keep = records_lib.pixel_boxes_to_relative(
            f"{annotation_file} (image {image_id})", [o[2] for o in objects],
            height, width, issues,
        )
        kept = [o for o, k in zip(objects, keep) if k]
        records.append(
            records_lib.make_record(
                os.path.join(image_dir, file_name), image_id, file_name, height,
                width, boxes, [o[0] for o in kept], [o[1] for o in kept],
                [o[3] for o in kept],
            )
        )
    if verify_images:
        records = records_lib.verify_images(records, issues)
    return records_lib.Dataset(
        records,
        tuple(c["name"] for c in categories),
        tuple(c["id"] for c in categories),
        dict(issues.counts),
    )


def _file_name(record):
    return os.path.basename(record.image) if isinstance(record.image, str) else record.name


def to_coco_json(dataset: records_lib.Dataset) -> dict:
    """The dataset as a COCO instances dict (for export and for pycocotools evaluation).

    Category ids are `Dataset.category_ids` or, when there are none, ``k + 1``.
    ``difficult`` boxes are written with ``iscrowd=1`` so that COCO evaluation
    ignores them. Pixel boxes are ``[x, y, w, h]`` from the relative corners;
    ``area`` is `Record.areas`.
    """
    category_ids = dataset.category_ids or tuple(
        range(1, len(dataset.class_names) + 1)
    )
    images, annotations = [], []
    for record in dataset.records:
        images.append({
            "id": record.image_id, "file_name": _file_name(record),
            "height": record.height, "width": record.width,
        })
        scale = np.array([record.width, record.height] * 2, np.float64)
        objects = zip(record.boxes, record.classes, record.difficult, record.areas)
        for box, cls, difficult, area in objects:
            x1, y1, x2, y2 = (box.astype(np.float64) * scale).tolist()
            annotations.append({
                "id": len(annotations) + 1, "image_id": record.image_id,
                "category_id": int(category_ids[cls]),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area),
                "iscrowd": int(difficult),
            })
    categories = [
        {"id": int(i), "name": name} for i, name in zip(category_ids, dataset.class_names)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(dataset: records_lib.Dataset, out_dir: str, split: str) -> Tuple[str, str]:
    """Writes ``<out_dir>/<split>/<file_name>`` and ``annotations/instances_<split>.json``.

    Returns:
        ``(annotation_file, image_dir)``, ready for `read_coco`.
    """
    image_dir = os.path.join(out_dir, split)
    annotation_dir = os.path.join(out_dir, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(annotation_dir, exist_ok=True)
    for record in dataset.records:
        target = os.path.join(image_dir, _file_name(record))
        if isinstance(record.image, str):
            shutil.copyfile(record.image, target)
        else:
            with open(target, "wb") as f:
                f.write(record.image)
    annotation_file = os.path.join(annotation_dir, f"instances_{split}.json")
    write_json(to_coco_json(dataset), annotation_file, indent=None)
    return annotation_file, image_dir

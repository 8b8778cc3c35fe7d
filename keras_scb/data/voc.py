"""Pascal VOC style datasets (a VOCdevkit year folder, or any tree laid out like one).

Layout of each root: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
``ImageSets/Main/<split>.txt`` (one id per line). Several roots and splits are
joined in order, e.g. VOC07+12 trainval is
``read_voc([voc2007, voc2012], "trainval", VOC_CLASSES)``.
"""

import dataclasses
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence, Union

from keras_scb.data import records as records_lib

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _as_list(value):
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def _split_ids(root, split):
    path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such split file (split {split!r} of {root}).")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def _parse_annotation(path, issues):
    """Returns ``(height, width, objects)`` or ``None`` if the file is skipped.

    ``objects`` is a list of ``(name, difficult, [x1 - 1, y1 - 1, x2, y2])`` with
    the VOC 1-based inclusive pixel box made continuous (see `records`).
    """
    if not os.path.isfile(path):
        issues.bad_file(path, "missing annotation file")
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        issues.bad_file(path, "malformed XML", str(error))
        return None
    try:
        width = int(float(root.findtext("size/width")))
        height = int(float(root.findtext("size/height")))
    except (TypeError, ValueError):
        issues.bad_file(path, "malformed annotation", "no valid <size><width>/<height>")
        return None
    if width <= 0 or height <= 0:
        issues.bad_file(path, "malformed annotation", f"image size {width}x{height}")
        return None
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        try:
            x1, y1, x2, y2 = (
                float(obj.findtext(f"bndbox/{key}"))
                for key in ("xmin", "ymin", "xmax", "ymax")
            )
            difficult = bool(int(obj.findtext("difficult") or 0))
        except (TypeError, ValueError):
            issues.bad_object(path, "malformed box", f"object {name!r}")
            continue
        objects.append((name, difficult, [x1 - 1.0, y1 - 1.0, x2, y2]))
    return height, width, objects


def read_voc(
    roots: Union[str, Sequence[str]],
    splits: Union[str, Sequence[str]] = "trainval",
    class_names: Optional[Sequence[str]] = None,
    *,
    bad_files: str = "raise",
    bad_objects: str = "raise",
    verify_images: bool = True,
) -> records_lib.Dataset:
    """Reads every ``split`` of every ``root``, in that order.

    Args:
        roots: one VOC-style folder or several (e.g. VOC2007 and VOC2012).
        splits: split names under ``ImageSets/Main`` (e.g. ``"trainval"``).
        class_names: the label space, in id order. ``None`` takes the sorted names
            found in these annotations; pass it explicitly so that every split of a
            dataset agrees. An object whose name is not here is a bad object.
        bad_files, bad_objects: ``"raise"`` or ``"skip"`` (see `records`).
        verify_images: check that every image exists and decodes (about 1-5 ms an
            image); without it a bad image stops the input pipeline instead.

    Returns:
        `Dataset` with ``image_id`` the running index; ``difficult`` kept.
    """
    issues = records_lib.IssueLog(bad_files, bad_objects)
    parsed = []
    for root in _as_list(roots):
        for split in _as_list(splits):
            for image_name in _split_ids(root, split):
                xml = os.path.join(root, "Annotations", f"{image_name}.xml")
                annotation = _parse_annotation(xml, issues)
                if annotation is not None:
                    jpeg = os.path.join(root, "JPEGImages", f"{image_name}.jpg")
                    parsed.append((xml, jpeg, image_name, annotation))
    if class_names is None:
        class_names = sorted(
            {name for *_, (_, _, objects) in parsed for name, _, _ in objects}
        )
    class_ids = {name: k for k, name in enumerate(class_names)}

    records = []
    for xml, jpeg, image_name, (height, width, objects) in parsed:
        known = []
        for name, difficult, box in objects:
            if name in class_ids:
                known.append((class_ids[name], difficult, box))
            else:
                issues.bad_object(xml, "unknown class", repr(name))
        boxes, keep = records_lib.pixel_boxes_to_relative(
            xml, [o[2] for o in known], height, width, issues
        )
        kept = [o for o, k in zip(known, keep) if k]
        records.append(
            records_lib.make_record(
                jpeg, len(records), image_name, height, width, boxes,
                [o[0] for o in kept], [o[1] for o in kept],
            )
        )
    if verify_images:
        records = records_lib.verify_images(records, issues)
        # Keep image_id equal to the index after dropping bad images.
        records = [dataclasses.replace(r, image_id=i) for i, r in enumerate(records)]
    return records_lib.Dataset(records, tuple(class_names), None, dict(issues.counts))

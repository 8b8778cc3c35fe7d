"""Pascal VOC style datasets (a VOCdevkit year folder, or any tree laid out like one).

Layout of each root: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` (or
``.jpeg`` / ``.png``; decoded by content) and ``ImageSets/Main/<split>.txt`` (one
id per line). Several roots and splits are joined in order, e.g. VOC07+12
trainval is ``read_voc([voc2007, voc2012], "trainval", VOC_CLASSES)``. A split
written ``<folder>/<split>`` is read from the root of that folder name only: VOC07
test is ``read_voc([voc2007, voc2012], "VOC2007/test")`` (VOC2012 has no public
test split).

The label map (class names in id order) belongs to the dataset, not to a split,
so that train and val agree on every id (`dataset_class_names`): given
explicitly, else ``<root>/labels.txt``, else the sorted names found in every
annotation file of the dataset. A name that differs from a class only by letter
case or a typo (``rbc`` for ``RBC``) is a bad object naming its file, never a new
class.
"""

import collections
import dataclasses
import difflib
import glob
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence, Tuple, Union

from keras_scb import label_map
from keras_scb.data import records as records_lib

# The file names tried for an image id: `records.IMAGE_EXTENSIONS` in order (VOC's
# own, .jpg, first), each lower then upper case.
_ID_EXTENSIONS = tuple(
    case(ext) for ext in records_lib.IMAGE_EXTENSIONS for case in (str.lower, str.upper))

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
        lines = [(number, line.split()[0]) for number, line in enumerate(f, 1) if line.strip()]
    for number, name in lines:
        if os.path.isabs(name) or "/" in name or "\\" in name or name in (".", ".."):
            raise records_lib.BadInputError(
                f"{path}, line {number}: image name {name!r} is not a plain name (a path, "
                "or one leading outside Annotations/ and JPEGImages/): refused."
            )
    return [name for _, name in lines]


def _folder_name(root):
    return os.path.basename(os.path.normpath(root))


def _check_split_folders(roots, splits):
    """Every ``"<folder>/<split>"`` must name one of ``roots`` by its last component."""
    names = [_folder_name(root) for root in _as_list(roots)]
    for split in _as_list(splits):
        folder = split.rpartition("/")[0]
        if folder and folder not in names:
            raise FileNotFoundError(
                f"split {split!r} names the folder {folder!r}, which is none of the "
                f"roots {_as_list(roots)}."
            )


def _splits_of(root, splits):
    """The split names to read from ``root``: the plain ones, and ``"<folder>/<split>"``
    where ``<folder>`` is ``root``'s last component."""
    for split in _as_list(splits):
        folder, _, name = split.rpartition("/")
        if not folder or folder == _folder_name(root):
            yield name


def _annotated_names(root):
    """Counts of every object name in ``root/Annotations/*.xml``.

    Files that do not parse are passed over here; reading a split that holds
    one reports it.
    """
    counts = collections.Counter()
    for path in sorted(glob.glob(os.path.join(glob.escape(root), "Annotations", "*.xml"))):
        try:
            tree = ET.parse(path)
        except (ET.ParseError, ValueError, LookupError):
            continue
        counts.update((obj.findtext("name") or "").strip() for obj in tree.iter("object"))
    counts.pop("", None)
    return counts


def dataset_class_names(roots: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """The label map of a VOC-style dataset, the same for every split.

    ``labels.txt`` in a root if there is one (roots that have one must agree),
    else the sorted object names of every ``Annotations/*.xml`` in every root,
    whichever split they belong to. Of names that differ only by letter case
    (``rbc`` and ``RBC``) only the most frequent spelling is a class: the others
    are then unknown classes, reported with their file.

    Raises:
        BadInputError: two roots' labels files disagree (naming both lists).
        LabelMapError: a labels file is malformed (naming it).
    """
    roots = _as_list(roots)
    labelled = {}
    for root in roots:
        path = os.path.join(root, label_map.LABELS_FILE)
        if os.path.isfile(path):
            labelled[path] = label_map.read_labels(path)
    if labelled:
        (first, names), *others = labelled.items()
        for path, other in others:
            try:
                label_map.check_same(names, other, first, path)
            except label_map.LabelMapError as error:
                raise records_lib.BadInputError(str(error)) from None
        return names
    counts = collections.Counter()
    for root in roots:
        counts.update(_annotated_names(root))
    spellings = collections.defaultdict(list)
    for name in sorted(counts):
        spellings[name.casefold()].append(name)
    return tuple(sorted(
        max(group, key=lambda name: counts[name]) for group in spellings.values()
    ))


def _unknown_class(name, class_names):
    """The detail of an unknown-class report, with the class it probably means."""
    guess = [c for c in class_names if c.casefold() == name.casefold()]
    guess = guess or difflib.get_close_matches(name, class_names, n=1, cutoff=0.75)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{name!r}{hint}; classes are {list(class_names)}"


def _image_path(root, image_name):
    """``JPEGImages/<id>`` with the first extension that exists (``.jpg`` if none)."""
    for extension in _ID_EXTENSIONS:
        path = os.path.join(root, "JPEGImages", image_name + extension)
        if os.path.isfile(path):
            return path
    return os.path.join(root, "JPEGImages", image_name + _ID_EXTENSIONS[0])


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
    except (ET.ParseError, ValueError, LookupError) as error:
        # ValueError / LookupError: an undecodable or unknown declared encoding.
        issues.bad_file(path, "malformed XML", str(error))
        return None
    try:
        width = int(float(root.findtext("size/width")))
        height = int(float(root.findtext("size/height")))
    except (TypeError, ValueError, OverflowError):
        issues.bad_file(path, "malformed annotation", "no valid <size><width>/<height>")
        return None
    problem = records_lib.image_size_problem(height, width)
    if problem:
        issues.bad_file(path, "malformed annotation", problem)
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
        splits: split names under ``ImageSets/Main`` (e.g. ``"trainval"``), read
            from every root, or ``"<folder>/<split>"`` (e.g. ``"VOC2007/test"``),
            read from the root named ``<folder>`` only.
        class_names: the label space, in id order. ``None`` takes
            `dataset_class_names` of ``roots`` (a ``labels.txt``, else the names
            in every split's annotations), so every split of a dataset agrees.
            An object whose name is not here is a bad object.
        bad_files, bad_objects: ``"raise"`` or ``"skip"`` (see `records`).
        verify_images: check that every image exists and decodes (about 1-5 ms an
            image); without it a bad image stops the input pipeline instead.

    Returns:
        `Dataset` with ``image_id`` the running index; ``difficult`` kept.
    """
    issues = records_lib.IssueLog(bad_files, bad_objects)
    parsed = []
    _check_split_folders(roots, splits)
    for root in _as_list(roots):
        for split in _splits_of(root, splits):
            for image_name in _split_ids(root, split):
                xml = os.path.join(root, "Annotations", f"{image_name}.xml")
                annotation = _parse_annotation(xml, issues)
                if annotation is not None:
                    image = _image_path(root, image_name)
                    parsed.append((xml, image, image_name, annotation))
    if class_names is None:
        class_names = dataset_class_names(roots)
    class_names = tuple(class_names)
    class_ids = {name: k for k, name in enumerate(class_names)}

    records = []
    for xml, image, image_name, (height, width, objects) in parsed:
        known = []
        for name, difficult, box in objects:
            if name in class_ids:
                known.append((class_ids[name], difficult, box))
            else:
                issues.bad_object(xml, "unknown class", _unknown_class(name, class_names))
        boxes, keep = records_lib.pixel_boxes_to_relative(
            xml, [o[2] for o in known], height, width, issues
        )
        kept = [o for o, k in zip(known, keep) if k]
        records.append(
            records_lib.make_record(
                image, len(records), image_name, height, width, boxes,
                [o[0] for o in kept], [o[1] for o in kept],
            )
        )
    if verify_images:
        records = records_lib.verify_images(records, issues)
        # Keep image_id equal to the index after dropping bad images.
        records = [dataclasses.replace(r, image_id=i) for i, r in enumerate(records)]
    return records_lib.Dataset(records, class_names, None, dict(issues.counts))

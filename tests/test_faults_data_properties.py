"""Property-based guarantees of the VOC and COCO readers and of `evaluate_detections`.

Generated malformed input (missing and extra fields, wrong types, non-finite and
huge numbers, inverted boxes, Unicode names) either is rejected with the
documented error naming the file (`BadInputError`) or the image (``ValueError``
starting ``Image <id>``), never with another exception, or is accepted, and then
yields finite boxes inside the image, class ids in range and finite SSD targets.

The examples are derandomized (the same ones on every run and machine) and no
example database is written, so the suite stays reproducible.
"""

import json
import math
import os
import xml.sax.saxutils

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from keras_scb import anchors as anchors_lib
from keras_scb import data, evaluation, matching

CLASSES = ("cat", "dog")
SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ANCHORS = anchors_lib.get_anchors("ssdlite300")

NUMBERS = st.one_of(
    st.integers(-10, 400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1e300, -1e300, 1e-300, 2**63, -(2**63)]),
)
NAMES = st.one_of(
    st.sampled_from(CLASSES + ("Cat", "DOG", "c\u00e4t", "", " cat ")),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
)


def _check_accepted(dataset):
    """Accepted input: boxes finite, inside [0, 1] with positive area; finite targets."""
    for record in dataset.records:
        boxes, classes = record.boxes, record.classes
        assert np.isfinite(boxes).all()
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert ((classes >= 0) & (classes < len(dataset.class_names))).all()
        padded_boxes = np.concatenate([boxes, np.zeros((1, 4), np.float32)])
        padded_classes = np.concatenate([classes, [-1]]).astype(np.int32)
        targets = matching.encode_targets(padded_boxes, padded_classes, ANCHORS).numpy()
        assert np.isfinite(targets).all()


# --- VOC XML -----------------------------------------------------------------------


def _read_or_named_error(path, read):
    """``read()``'s dataset, checked, or ``None`` after a `BadInputError` that names ``path``."""
    try:
        dataset = read()
    except data.BadInputError as error:
        assert str(error).startswith(str(path)), error
        event(str(error)[len(str(path)):].split(":")[1])
        return None
    event(f"accepted {dataset.num_boxes()} boxes, issues {sorted(dataset.issues)}")
    _check_accepted(dataset)
    return dataset


def _text(value):
    return value if isinstance(value, str) else repr(value)


def _usually(draw, valid, bad):
    """A draw from ``valid`` most of the time (and when shrinking), else from ``bad``."""
    return draw(bad) if draw(st.integers(0, 9)) == 9 else draw(valid)


def _boxes():
    """Corners inside any image of at least 100x100 px, or inverted, or reaching outside."""
    return st.tuples(
        st.integers(1, 60), st.integers(1, 60), st.integers(-10, 40), st.integers(-10, 40),
    ).map(lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]] if min(b[2:]) >= 0 or b[0] > 5
          else [b[0], b[1], 700, 90])


BAD_FIELD = st.one_of(st.none(), NUMBERS.map(_text), st.text(max_size=5))


@st.composite
def voc_annotations(draw):
    """The text of an annotation file: mostly valid, with fields missing, mistyped,
    non-finite, huge or extra, inverted boxes, odd names, and truncated files."""
    size = "".join(
        f"<{key}>{_text(value)}</{key}>"
        for key in ("width", "height")
        if (value := _usually(draw, st.integers(100, 500), BAD_FIELD)) is not None
    )
    objects = []
    for _ in range(draw(st.integers(0, 4))):
        name = _usually(draw, st.sampled_from(CLASSES), NAMES)
        # Unescaped names may break the XML: that is a case too.
        name = name if draw(st.integers(0, 9)) == 9 else xml.sax.saxutils.escape(name)
        box = draw(_boxes())
        coords = "".join(
            f"<{key}>{_text(value)}</{key}>"
            for key, valid in zip(("xmin", "ymin", "xmax", "ymax"), box)
            if (value := _usually(draw, st.just(valid), BAD_FIELD)) is not None
        )
        difficult = _usually(draw, st.sampled_from(["", "<difficult>0</difficult>"]), st.sampled_from(
            ["<difficult>1</difficult>", "<difficult>x</difficult>", "<difficult>inf</difficult>"]))
        extra = _usually(draw, st.just(""), st.sampled_from(
            ["<pose>Left</pose>", "<bndbox><xmin>1</xmin></bndbox>", "<name>dog</name>"]))
        objects.append(f"<object><name>{name}</name>{difficult}<bndbox>{coords}</bndbox>{extra}</object>")
    text = f"<annotation><size>{size}</size>{''.join(objects)}</annotation>"
    if draw(st.integers(0, 9)) == 9:
        text = text[: draw(st.integers(0, len(text)))]  # truncated file
    return text


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    for folder in ("Annotations", "ImageSets/Main"):
        os.makedirs(root / folder)
    (root / "ImageSets" / "Main" / "train.txt").write_text("img\n")
    return root


def _voc_example(width, xmax):
    return (
        f"<annotation><size><width>{width}</width><height>200</height></size><object>"
        f"<name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{xmax}</xmax>"
        "<ymax>10</ymax></bndbox></object></annotation>"
    )


@SETTINGS
@given(text=voc_annotations(), policy=st.sampled_from(["raise", "skip"]))
# Explicit cases that rarely come up at random: an infinite or huge size.
@example(text=_voc_example("inf", 10), policy="raise")
@example(text=_voc_example("1e300", 10), policy="skip")
def test_voc_reader_names_the_file_or_yields_finite_targets(voc_root, text, policy):
    path = voc_root / "Annotations" / "img.xml"
    path.write_text(text, encoding="utf-8")
    _read_or_named_error(path, lambda: data.read_voc(
        str(voc_root), "train", CLASSES, bad_files=policy, bad_objects=policy,
        verify_images=False,
    ))


# --- COCO JSON ---------------------------------------------------------------------

VALUES = st.one_of(NUMBERS, st.none(), st.text(max_size=4), st.lists(st.integers(0, 9), max_size=2))
FILE_NAMES = st.one_of(
    st.sampled_from(["sub/a.png", "../a.jpg", "/abs/a.jpg", "a/../../b.jpg", "", "a\x00.jpg"]),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
    NUMBERS,
)


def _maybe(draw, entry):
    """Usually the entry as is; else without one key, or with an unknown one."""
    choice = draw(st.integers(0, 9))
    if choice == 8 and entry:
        entry.pop(draw(st.sampled_from(sorted(entry))))
    elif choice == 9:
        entry["extra"] = draw(VALUES)
    return entry


@st.composite
def coco_files(draw):
    """An instances file: mostly valid, with the same kinds of faults as the VOC one."""
    sizes = st.integers(100, 500)
    images = [
        _maybe(draw, {
            "id": _usually(draw, st.just(i + 1), VALUES),
            "file_name": _usually(draw, st.just(f"{i}.jpg"), FILE_NAMES),
            "height": _usually(draw, sizes, VALUES),
            "width": _usually(draw, sizes, VALUES),
        })
        for i in range(draw(st.integers(0, 3)))
    ]
    coords = _boxes().map(lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]])
    bad_bbox = st.one_of(st.lists(NUMBERS, min_size=4, max_size=4), st.lists(NUMBERS, max_size=5), VALUES)
    annotations = [
        _maybe(draw, {
            "id": i + 1, "image_id": _usually(draw, st.integers(1, 3), VALUES),
            "category_id": _usually(draw, st.sampled_from([1, 2]), VALUES),
            "bbox": _usually(draw, coords, bad_bbox),
            "iscrowd": _usually(draw, st.just(0), st.sampled_from([1, None, "x", 2.5])),
        })
        for i in range(draw(st.integers(0, 6)))
    ]
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": _usually(draw, st.just("dog"), NAMES)}]
    if draw(st.integers(0, 9)) == 9:
        categories.append(_maybe(draw, {"id": draw(VALUES), "name": draw(VALUES)}))
    content = {"images": images, "annotations": annotations, "categories": categories}
    return _maybe(draw, content)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return tmp_path_factory.mktemp("coco")


@SETTINGS
@given(content=coco_files(), policy=st.sampled_from(["raise", "skip"]))
def test_coco_reader_names_the_file_or_yields_finite_targets(coco_root, content, policy):
    path = coco_root / "instances.json"
    path.write_text(json.dumps(content), encoding="utf-8")  # NaN / Infinity as Python writes them
    dataset = _read_or_named_error(path, lambda: data.read_coco(
        str(path), str(coco_root / "images"), bad_files=policy, bad_objects=policy,
        verify_images=False,
    ))
    if dataset is None:
        return
    for record in dataset.records:  # accepted file names stay inside the image folder
        folder = os.path.realpath(coco_root / "images")
        assert os.path.realpath(record.image).startswith(folder + os.sep)


# --- evaluate_detections ------------------------------------------------------------

def _rows(draw, count, valid, bad, width=None):
    rows = []
    for _ in range(count):
        if width is None:
            rows.append(_usually(draw, valid, bad))
        else:
            rows.append([_usually(draw, valid, bad) for _ in range(width)])
    return rows


@st.composite
def evaluation_inputs(draw):
    """Mostly valid inputs, with non-finite and huge numbers, inverted boxes, class ids
    out of range (-1, C) and Unicode image ids."""
    unit, classes = st.floats(0, 1), st.integers(0, len(CLASSES) - 1)
    bad_coord, bad_class = st.one_of(st.floats(-0.5, 1.5), NUMBERS), st.sampled_from([-1, 2, 7])
    ground_truths, detections = [], []
    for image in range(draw(st.integers(1, 3))):
        image_id = f"im\u00e4ge{image}"
        n, k = draw(st.integers(0, 3)), draw(st.integers(0, 4))
        ground_truths.append(evaluation.ImageGroundTruth(
            image_id, _usually(draw, st.integers(1, 500), st.sampled_from([0, -3, 10**6])),
            draw(st.integers(1, 500)), _rows(draw, n, unit, bad_coord, 4),
            _rows(draw, n, classes, bad_class),
        ))
        detections.append(evaluation.ImageDetections(
            image_id, _rows(draw, k, unit, bad_coord, 4), _rows(draw, k, unit, NUMBERS),
            _rows(draw, k, classes, bad_class),
        ))
    return ground_truths, detections


def _image_ids(ground_truths):
    return tuple(f"Image {gt.image_id!r}" for gt in ground_truths)


@SETTINGS
@given(inputs=evaluation_inputs(), policy=st.sampled_from(["raise", "drop"]))
def test_evaluate_detections_names_the_image_or_gives_metrics_in_0_1(inputs, policy):
    ground_truths, detections = inputs
    try:
        results = evaluation.evaluate_detections(
            ground_truths, detections, class_names=CLASSES, non_finite=policy
        )
    except ValueError as error:
        assert str(error).startswith(_image_ids(ground_truths)), error
        event(str(error).split(": ")[1][:30])
        return
    event("accepted")
    values = list(results["coco"].values()) + [results["voc07"]["mAP"]]
    values += list(results["voc07"]["per_class"].values())
    for value in values:
        assert value is None or (math.isfinite(value) and 0.0 <= value <= 1.0), results

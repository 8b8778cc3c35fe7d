"""Bad input: a clear error naming the file by default, a counted skip on request."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_scb import data

CLASSES = ("cat", "dog")
HEIGHT, WIDTH = 40, 60


def _jpeg(height=HEIGHT, width=WIDTH, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def _xml(objects, height=HEIGHT, width=WIDTH):
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


GOOD_OBJECTS = {
    "img0": [("cat", (1, 1, 30, 20), 0), ("dog", (31, 21, 60, 40), 1)],
    "img1": [("dog", (5, 5, 15, 25), 0)],
    "img2": [("cat", (10, 10, 50, 30), 0), ("cat", (2, 3, 8, 9), 0)],
}


def _voc_tree(root, objects=GOOD_OBJECTS):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for i, (name, objs) in enumerate(objects.items()):
        with open(os.path.join(root, "Annotations", f"{name}.xml"), "w") as f:
            f.write(_xml(objs))
        with open(os.path.join(root, "JPEGImages", f"{name}.jpg"), "wb") as f:
            f.write(_jpeg(seed=i))
    with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "w") as f:
        f.write("\n".join(objects) + "\n")
    return str(root)


def _read(root, **kwargs):
    return data.read_voc(root, "train", CLASSES, **kwargs)


def test_good_tree_reads_cleanly(tmp_path):
    dataset = _read(_voc_tree(tmp_path))
    assert len(dataset) == 3 and dataset.num_boxes() == 5 and dataset.issues == {}
    assert dataset.records[0].difficult.tolist() == [False, True]


def _corrupt(root):
    """A JPEG header followed by garbage."""
    with open(os.path.join(root, "JPEGImages", "img1.jpg"), "wb") as f:
        f.write(_jpeg()[:20] + np.random.default_rng(1).bytes(3000))
    return "img1.jpg"


def _not_an_image(root):
    with open(os.path.join(root, "JPEGImages", "img1.jpg"), "wb") as f:
        f.write(np.random.default_rng(1).bytes(3000))
    return "img1.jpg"


def _truncated(root):
    path = os.path.join(root, "JPEGImages", "img1.jpg")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])
    return "img1.jpg"


def _missing_image(root):
    os.remove(os.path.join(root, "JPEGImages", "img1.jpg"))
    return "img1.jpg"


def _wrong_size(root):
    with open(os.path.join(root, "JPEGImages", "img1.jpg"), "wb") as f:
        f.write(_jpeg(height=HEIGHT + 1))
    return "img1.jpg"


def _malformed_xml(root):
    with open(os.path.join(root, "Annotations", "img1.xml"), "w") as f:
        f.write(_xml(GOOD_OBJECTS["img1"])[:-20])
    return "img1.xml"


def _missing_xml(root):
    os.remove(os.path.join(root, "Annotations", "img1.xml"))
    return "img1.xml"


@pytest.mark.parametrize("fault, kind", [
    (_corrupt, "corrupt or truncated JPEG"),
    (_not_an_image, "not an image"),
    (_truncated, "corrupt or truncated JPEG"),
    (_missing_image, "missing image"),
    (_wrong_size, "image size mismatch"),
    (_malformed_xml, "malformed XML"),
    (_missing_xml, "missing annotation file"),
])
def test_bad_file_raises_naming_it_or_is_skipped_and_counted(tmp_path, fault, kind):
    root = _voc_tree(tmp_path)
    file_name = fault(root)
    with pytest.raises(data.BadInputError, match=f"{file_name}.*{kind}"):
        _read(root)
    dataset = _read(root, bad_files="skip")
    assert [r.name for r in dataset.records] == ["img0", "img2"]
    assert [r.image_id for r in dataset.records] == [0, 1]
    assert dataset.issues == {kind: 1}


@pytest.mark.parametrize("bad_object, kind", [
    (("cat", (20, 5, 10, 25), 0), "zero or negative area box"),
    (("cat", (5, 25, 15, 5), 0), "zero or negative area box"),
    (("cat", (70, 5, 90, 25), 0), "box outside the image"),
    (("horse", (5, 5, 15, 25), 0), "unknown class"),
    (("cat", ("five", 5, 15, 25), 0), "malformed box"),
])
def test_bad_object_raises_naming_the_file_or_is_dropped_and_counted(tmp_path, bad_object, kind):
    objects = dict(GOOD_OBJECTS, img1=[bad_object] + GOOD_OBJECTS["img1"])
    root = _voc_tree(tmp_path, objects)
    with pytest.raises(data.BadInputError, match=f"img1.xml.*{kind}"):
        _read(root)
    dataset = _read(root, bad_objects="skip")
    assert len(dataset) == 3 and dataset.num_boxes() == 5
    assert dataset.issues == {kind: 1}
    np.testing.assert_allclose(dataset.records[1].boxes, [[4 / 60, 4 / 40, 15 / 60, 25 / 40]], atol=1e-6)


def test_one_pixel_voc_box_is_valid(tmp_path):
    """VOC boxes are inclusive, so xmin == xmax is one pixel wide, not empty."""
    objects = dict(GOOD_OBJECTS, img1=[("cat", (7, 9, 7, 9), 0)])
    dataset = _read(_voc_tree(tmp_path, objects))
    np.testing.assert_allclose(dataset.records[1].boxes, [[6 / 60, 8 / 40, 7 / 60, 9 / 40]], atol=1e-6)


def test_box_reaching_outside_the_image_is_clipped_and_counted(tmp_path):
    objects = dict(GOOD_OBJECTS, img1=[("dog", (-9, 5, 15, 55), 0), ("cat", (50, 1, 80, 10), 0)])
    dataset = _read(_voc_tree(tmp_path, objects))
    assert dataset.issues == {"clipped box": 2}
    np.testing.assert_allclose(
        dataset.records[1].boxes, [[0, 4 / 40, 15 / 60, 1], [49 / 60, 0, 1, 10 / 40]], atol=1e-6
    )


def test_image_without_objects_is_valid_and_trains_as_all_negative(tmp_path):
    objects = dict(GOOD_OBJECTS, img1=[])
    dataset = _read(_voc_tree(tmp_path, objects))
    assert dataset.issues == {} and len(dataset.records[1].classes) == 0
    anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)
    empty = data.Dataset([dataset.records[1]] * 2, CLASSES)
    images, targets = next(iter(data.training_pipeline(
        empty, anchors, image_size=32, batch_size=2, seed=0, max_boxes=3)))
    assert images.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(targets[..., 4], 0)  # background everywhere
    np.testing.assert_array_equal(targets[..., 5], -1)


def test_unknown_split_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageSets.Main.val.txt"):
        data.read_voc(_voc_tree(tmp_path), "val", CLASSES)


def _coco_tree(root, annotations):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    with open(os.path.join(root, "images", "a.jpg"), "wb") as f:
        f.write(_jpeg())
    content = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": HEIGHT, "width": WIDTH}],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
    }
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(content, f)
    return path, os.path.join(root, "images")


def _annotation(i, bbox, category=3, crowd=0):
    return {"id": i, "image_id": 7, "category_id": category, "bbox": bbox, "iscrowd": crowd,
            "area": 1.0}


def test_malformed_coco_json_raises_naming_the_file(tmp_path):
    path = tmp_path / "instances_bad.json"
    path.write_text('{"images": [')
    with pytest.raises(data.BadInputError, match="instances_bad.json.*malformed JSON"):
        data.read_coco(str(path), str(tmp_path))
    path.write_text('{"annotations": []}')
    with pytest.raises(data.BadInputError, match="instances_bad.json.*not a COCO"):
        data.read_coco(str(path), str(tmp_path))


@pytest.mark.parametrize("bad, kind", [
    (_annotation(2, [10, 10, 0, 5]), "zero or negative area box"),
    (_annotation(2, [10, 10, 5, -1]), "zero or negative area box"),
    (_annotation(2, [10, 10, 5, 5], category=4), "unknown category"),
    (_annotation(2, [10, 10, 5]), "malformed box"),
    (dict(_annotation(2, [1, 1, 2, 2]), image_id=8), "annotation of an unknown image"),
])
def test_coco_bad_object_raises_or_is_counted(tmp_path, bad, kind):
    path, images = _coco_tree(tmp_path, [_annotation(1, [6, 4, 12, 8], category=9), bad])
    with pytest.raises(data.BadInputError, match=f"instances.json.*{kind}"):
        data.read_coco(path, images)
    dataset = data.read_coco(path, images, bad_objects="skip")
    assert dataset.issues == {kind: 1}
    np.testing.assert_allclose(dataset.records[0].boxes, [[0.1, 0.1, 0.3, 0.3]], atol=1e-6)
    assert dataset.records[0].classes.tolist() == [1]


def test_coco_missing_image_raises_or_is_counted(tmp_path):
    path, images = _coco_tree(tmp_path, [_annotation(1, [6, 4, 12, 8])])
    os.remove(os.path.join(images, "a.jpg"))
    with pytest.raises(data.BadInputError, match="a.jpg.*missing image"):
        data.read_coco(path, images)
    dataset = data.read_coco(path, images, bad_files="skip")
    assert len(dataset) == 0 and dataset.issues == {"missing image": 1}


def test_policies_are_checked():
    with pytest.raises(ValueError, match="bad_files"):
        data.read_voc("unused", "train", bad_files="ignore")

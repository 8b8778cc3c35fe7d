"""Readers against the vendored data (BCCD, COCO subset) and the synthetic generator."""

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from keras_scb import data
from keras_scb.data import synthetic

BCCD_SPLITS = {"train": 205, "val": 87, "test": 72}


@pytest.fixture(scope="module")
def bccd():
    return {split: data.load_bccd(split) for split in BCCD_SPLITS}


def test_vendored_folders_keep_their_notices():
    for name in ("LICENSE", "SOURCE.txt"):
        assert os.path.isfile(os.path.join(data.bccd_root(), name))
    for name in ("SOURCE.txt", "PROVENANCE.tsv"):
        assert os.path.isfile(os.path.join(data.coco_subset_root(), name))


def test_bccd_split_sizes_and_box_counts(bccd):
    for split, count in BCCD_SPLITS.items():
        assert len(bccd[split]) == count
        assert bccd[split].issues == {}
    totals = {name: 0 for name in data.BCCD_CLASSES}
    for split in BCCD_SPLITS:
        for name, n in bccd[split].class_counts().items():
            totals[name] += n
    assert totals == {"RBC": 4155, "WBC": 372, "Platelets": 361}
    assert sum(d.num_boxes() for d in bccd.values()) == 4888
    names = [r.name for d in bccd.values() for r in d.records]
    assert len(set(names)) == 364


def test_joined_splits_equal_trainval(bccd):
    joined = data.load_bccd(["train", "val"], verify_images=False)
    trainval = data.load_bccd("trainval", verify_images=False)
    assert len(joined) == len(trainval) == 292
    assert sorted(r.name for r in joined.records) == sorted(r.name for r in trainval.records)
    assert joined.num_boxes() == trainval.num_boxes() == bccd["train"].num_boxes() + bccd["val"].num_boxes()
    assert [r.image_id for r in joined.records] == list(range(292))


def test_voc_boxes_match_the_xml(bccd):
    """Relative corners back to VOC's 1-based inclusive pixels, against a plain XML parse."""
    for record in bccd["val"].records[:20]:
        root = ET.parse(os.path.join(data.bccd_root(), "Annotations", record.name + ".xml")).getroot()
        objects = root.findall("object")
        expected = np.array(
            [[float(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
        )
        width, height = int(root.find("size/width").text), int(root.find("size/height").text)
        pixels = record.boxes * [width, height, width, height] + [1, 1, 0, 0]
        np.testing.assert_allclose(pixels, expected, atol=1e-3)
        names = [data.BCCD_CLASSES[c] for c in record.classes]
        assert names == [o.find("name").text for o in objects]
        assert not record.difficult.any()
        assert record.image.endswith(os.path.join("JPEGImages", record.name + ".jpg"))
        assert (record.height, record.width) == (height, width)


def test_read_voc_discovers_sorted_class_names_when_not_given():
    dataset = data.read_voc(data.bccd_root(), "test", verify_images=False)
    assert dataset.class_names == ("Platelets", "RBC", "WBC")


@pytest.mark.parametrize("split, images, boxes, crowd", [
    ("train2017", 56, 565, 6), ("val2017", 49, 495, 7),
])
def test_coco_subset_counts_and_crowd_policies(split, images, boxes, crowd):
    kept = data.load_coco_subset(split)
    assert (len(kept), kept.num_boxes(), sum(int(r.difficult.sum()) for r in kept.records)) == (
        images, boxes, crowd)
    dropped = data.load_coco_subset(split, crowd="drop", verify_images=False)
    assert dropped.num_boxes() == boxes - crowd
    assert not any(r.difficult.any() for r in dropped.records)
    assert len(kept.class_names) == 80 and kept.issues == {}


def test_coco_boxes_and_category_ids_match_the_json():
    """Against the raw JSON, with keras-cv's box conversion as the reference."""
    from keras_cv import bounding_box

    root = data.coco_subset_root()
    with open(os.path.join(root, "annotations", "instances_val2017.json")) as f:
        raw = json.load(f)
    dataset = data.load_coco_subset("val2017", verify_images=False)
    assert dataset.category_ids == tuple(sorted(c["id"] for c in raw["categories"]))
    by_image = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert [r.image_id for r in dataset.records] == [i["id"] for i in raw["images"]]
    for record, image in zip(dataset.records, raw["images"]):
        annotations = by_image.get(image["id"], [])
        expected = bounding_box.convert_format(
            np.array([a["bbox"] for a in annotations], np.float32).reshape(-1, 4),
            source="xywh", target="rel_xyxy",
            image_shape=(image["height"], image["width"], 3),
        )
        np.testing.assert_allclose(record.boxes, np.asarray(expected), atol=1e-6)
        assert [dataset.category_ids[c] for c in record.classes] == [a["category_id"] for a in annotations]
        assert record.difficult.tolist() == [bool(a["iscrowd"]) for a in annotations]
        assert record.image == os.path.join(root, "val2017", image["file_name"])


def test_synthetic_is_deterministic_and_prefix_stable():
    a = data.make_synthetic(6, image_size=(64, 80), seed=3)
    b = data.make_synthetic(4, image_size=(64, 80), seed=3)
    c = data.make_synthetic(4, image_size=(64, 80), seed=4)
    for ra, rb in zip(a.records, b.records):
        assert ra.image == rb.image
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
        np.testing.assert_array_equal(ra.classes, rb.classes)
    assert any(ra.image != rc.image for ra, rc in zip(a.records, c.records))


def test_synthetic_boxes_are_tight_around_the_drawn_shapes():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pixels, boxes, _ = synthetic._image(rng, 120, 160, (6, 60), (0.5, 2.0), (3, 10))
        pixels = pixels.astype(int)
        for x0, y0, x1, y1 in boxes:
            x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
            colour = pixels[(y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2]
            is_object = np.all(pixels == colour, axis=-1)
            inside = is_object[y0:y1, x0:x1]
            # Every edge row and column of the box touches the shape ...
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            # ... and the one-pixel ring around it does not.
            ring = np.zeros_like(is_object)
            ring[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
            ring[y0:y1, x0:x1] = False
            assert not is_object[ring].any()


def test_synthetic_default_scales_give_many_small_objects():
    dataset = data.make_synthetic(20, seed=0)
    sizes = np.concatenate([
        np.sqrt((r.boxes[:, 2] - r.boxes[:, 0]) * r.width * (r.boxes[:, 3] - r.boxes[:, 1]) * r.height)
        for r in dataset.records
    ])
    assert len(sizes) >= 60
    assert np.mean(sizes < 32) > 0.4
    assert sizes.min() >= 5 and sizes.max() <= 130


def test_coco_export_round_trip(tmp_path):
    dataset = data.make_synthetic(5, image_size=(50, 70), seed=1)
    annotation_file, image_dir = data.write_coco(dataset, str(tmp_path), "train")
    back = data.read_coco(annotation_file, image_dir)
    assert back.class_names == synthetic.SHAPES
    assert back.category_ids == (1, 2, 3)
    for original, read in zip(dataset.records, back.records):
        np.testing.assert_allclose(read.boxes, original.boxes, atol=1e-6)
        np.testing.assert_array_equal(read.classes, original.classes)
        with open(read.image, "rb") as f:
            assert f.read() == original.image

"""What the data readers and the metrics guarantee on bad input (issue 11).

Each test name is one guarantee. Bad input is a `BadInputError` (data) or a
``ValueError`` (metrics) whose message names the file, shard or image; with
``--bad_input=skip`` (``bad_files`` / ``bad_objects="skip"``) a bad image or box
is dropped and counted instead, and the counts are printed at the end.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_scb import data, evaluation
from keras_scb.data import records, voc

from flag_testing import train_flags

HEIGHT, WIDTH = 40, 60


def _pixels(seed=0, dtype=np.uint8, height=HEIGHT, width=WIDTH):
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top, (height, width, 3), dtype=dtype)


def _jpeg(seed=0):
    return tf.io.encode_jpeg(_pixels(seed)).numpy()


def _xml(objects, height=HEIGHT, width=WIDTH):
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height></size>"]
    for name, (x1, y1, x2, y2) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _voc_tree(root, splits, images=None):
    """``splits``: ``{split: {image_id: [(name, (x1, y1, x2, y2)), ...]}}``.

    ``images`` maps an image id to ``(file name, encoded bytes)``; default a JPEG.
    """
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for split, objects in splits.items():
        for i, (image_id, objs) in enumerate(objects.items()):
            with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
                f.write(_xml(objs))
            file_name, encoded = (images or {}).get(image_id, (f"{image_id}.jpg", _jpeg(i)))
            with open(os.path.join(root, "JPEGImages", file_name), "wb") as f:
                f.write(encoded)
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(objects) + "\n")
    return str(root)


def _coco_tree(root, annotations=(), file_name="a.jpg", encoded=None):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    with open(os.path.join(root, "images", "a.jpg"), "wb") as f:
        f.write(_jpeg() if encoded is None else encoded)
    content = {
        "images": [{"id": 7, "file_name": file_name, "height": HEIGHT, "width": WIDTH}],
        "annotations": [
            {"id": i + 1, "image_id": 7, "category_id": 3, "bbox": bbox, "iscrowd": 0}
            for i, bbox in enumerate(annotations)
        ],
        "categories": [{"id": 3, "name": "cat"}],
    }
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(content, f)  # writes float("inf") as the JSON extension Infinity
    return path, os.path.join(root, "images")


# --- evaluate_detections --------------------------------------------------------


def _one_image(det_boxes, det_scores, det_classes, gt_classes=(0,)):
    gts = [evaluation.ImageGroundTruth(
        "img0", 100, 100, [[0.1, 0.1, 0.5, 0.5]] * len(gt_classes), gt_classes
    )]
    dets = [evaluation.ImageDetections("img0", det_boxes, det_scores, det_classes)]
    return gts, dets


@pytest.mark.parametrize("boxes, scores", [
    ([[np.nan] * 4], [0.9]),
    ([[0.1, 0.1, np.inf, 0.5]], [0.9]),
    ([[0.1, 0.1, 0.5, 0.5]], [np.nan]),
])
def test_non_finite_detection_box_or_score_is_an_error_naming_the_image(boxes, scores):
    gts, dets = _one_image(boxes, scores, [0])
    with pytest.raises(ValueError, match="Image 'img0'.*non-finite"):
        evaluation.evaluate_detections(gts, dets, class_names=["a"])


def test_non_finite_detections_can_be_dropped_and_counted_instead():
    good = [[0.1, 0.1, 0.5, 0.5]]
    gts, dets = _one_image(good + [[np.nan] * 4], [0.5, 0.9], [0, 0])
    results = evaluation.evaluate_detections(gts, dets, class_names=["a"], non_finite="drop")
    assert results["dropped_non_finite"] == 1
    clean = evaluation.evaluate_detections(gts, _one_image(good, [0.5], [0])[1], class_names=["a"])
    assert results["coco"] == clean["coco"] and results["voc07"] == clean["voc07"]


def test_all_nan_detections_never_score_a_perfect_map():
    """The issue's reproduction: all-NaN boxes gave COCO AP 1.0 and VOC07 mAP 1.0."""
    gts, dets = _one_image([[np.nan] * 4], [0.9], [0])
    results = evaluation.evaluate_detections(gts, dets, class_names=["a"], non_finite="drop")
    assert results["coco"]["AP"] == 0.0 and results["voc07"]["mAP"] == 0.0


@pytest.mark.parametrize("bad_class", [-1, 2])
def test_detection_class_outside_0_to_c_minus_1_is_an_error_naming_the_image(bad_class):
    gts, dets = _one_image([[0.1, 0.1, 0.5, 0.5]], [0.9], [bad_class])
    with pytest.raises(ValueError, match=rf"Image 'img0'.*class ids \[{bad_class}\] outside 0..1"):
        evaluation.evaluate_detections(gts, dets, class_names=["a", "b"])


@pytest.mark.parametrize("bad_class", [-1, 2])
def test_ground_truth_class_outside_0_to_c_minus_1_is_an_error_naming_the_image(bad_class):
    gts, dets = _one_image([[0.1, 0.1, 0.5, 0.5]], [0.9], [0], gt_classes=(bad_class,))
    with pytest.raises(ValueError, match=rf"Image 'img0'.*class ids \[{bad_class}\] outside 0..1"):
        evaluation.evaluate_detections(gts, dets, class_names=["a", "b"])


def test_voc_matching_counts_a_nan_overlap_as_a_miss():
    """VOC matching on its own (without the entry check): NaN IoU is no match."""
    labels = evaluation._voc_labels(
        np.array([[10.0, 10, 50, 50]]), np.array([False]),
        np.array([[np.nan] * 4]), np.array([0.9]), 0.5,
    )
    assert labels.tolist() == [0]


# --- The label map is fixed once per dataset -------------------------------------

THREE = {"a": [("RBC", (1, 1, 10, 10))], "b": [("WBC", (2, 2, 20, 20))],
         "c": [("Platelets", (3, 3, 9, 9))]}


def test_voc_val_split_missing_a_class_keeps_the_training_label_map(tmp_path):
    """Train has 3 classes, val 2: val gets the same 3 names and ids (no shift, no IndexError)."""
    root = _voc_tree(tmp_path, {"train": THREE, "val": {"d": [("WBC", (1, 1, 30, 30))]}})
    train, val = data.read_voc(root, "train"), data.read_voc(root, "val")
    assert train.class_names == val.class_names == ("Platelets", "RBC", "WBC")
    assert val.class_names[val.records[0].classes[0]] == "WBC"


def test_labels_file_in_the_data_folder_fixes_names_and_order(tmp_path):
    root = _voc_tree(tmp_path, {"train": THREE})
    (tmp_path / "labels.txt").write_text("RBC\nWBC\nPlatelets\n")
    dataset = data.read_voc(root, "train")
    assert dataset.class_names == ("RBC", "WBC", "Platelets")
    assert [dataset.class_names[r.classes[0]] for r in dataset.records] == ["RBC", "WBC", "Platelets"]


def test_labels_files_of_two_roots_that_disagree_are_an_error_naming_both(tmp_path):
    roots = [_voc_tree(tmp_path / name, {"train": THREE}) for name in ("r1", "r2")]
    (tmp_path / "r1" / "labels.txt").write_text("RBC\nWBC\nPlatelets\n")
    (tmp_path / "r2" / "labels.txt").write_text("RBC\nPlatelets\nWBC\n")
    with pytest.raises(data.BadInputError, match=r"r2.labels.txt.*\['RBC', 'Platelets', 'WBC'\].*r1"):
        data.read_voc(roots, "train")


def test_misspelled_class_is_an_error_naming_the_file_not_a_new_class(tmp_path):
    """"rbc" among "RBC"s: an unknown class with a hint, or a counted skip; never class 4."""
    splits = {"train": dict(THREE, e=[("RBC", (1, 1, 5, 5))], f=[("rbc", (1, 1, 8, 8))])}
    root = _voc_tree(tmp_path, splits)
    with pytest.raises(data.BadInputError, match=r"f.xml: unknown class: 'rbc' \(did you mean 'RBC'\?\)"):
        data.read_voc(root, "train")
    dataset = data.read_voc(root, "train", bad_objects="skip")
    assert dataset.class_names == ("Platelets", "RBC", "WBC")
    assert dataset.issues == {"unknown class": 1}


def test_explicit_class_names_flag_gives_every_split_the_same_label_map(tmp_path):
    """``--dataset=voc --class_names=...``: every split object carries exactly those names."""
    from keras_scb.config import DataConfig

    root = _voc_tree(tmp_path, {"train": THREE, "val": {"d": [("WBC", (1, 1, 30, 30))]}})
    config = DataConfig(dataset="voc", data_dir=(root,), class_names="WBC,RBC,Platelets")
    train, val = config.read_split("train"), config.read_split("val")
    config.check_same_class_names(train, val)
    assert train.class_names == val.class_names == ("WBC", "RBC", "Platelets")
    with pytest.raises(ValueError, match=r"--class_names=rbc,wbc,platelets.*\['RBC', 'WBC', 'Platelets'\]"):
        DataConfig(dataset="bccd", class_names="rbc,wbc,platelets").read_split("val")


# --- TFRecord shards ---------------------------------------------------------------


def _shards(tmp_path, images):
    records_ = [
        records.make_record(image, i, f"img{i}", HEIGHT, WIDTH, [[0.1, 0.1, 0.5, 0.5]], [0], [False])
        for i, image in enumerate(images)
    ]
    meta = data.write_tfrecords(data.Dataset(records_, ("cat",)), str(tmp_path / "s"), 2, False)
    return meta, [str(tmp_path / f"s-0000{k}-of-00002.tfrecord") for k in range(2)]


def test_tfrecord_shard_with_a_corrupt_jpeg_is_an_error_naming_the_shard(tmp_path):
    meta, shards = _shards(tmp_path, [_jpeg(0), _jpeg(1)[:30] + b"\0" * 500, _jpeg(2)])
    with pytest.raises(data.BadInputError, match=rf"{shards[1]}: record 0: corrupt or truncated JPEG"):
        data.read_tfrecords(meta)


def test_truncated_tfrecord_shard_is_an_error_naming_the_shard(tmp_path):
    meta, shards = _shards(tmp_path, [_jpeg(0), _jpeg(1), _jpeg(2)])
    with open(shards[1], "r+b") as f:
        f.truncate(os.path.getsize(shards[1]) - 100)
    with pytest.raises(data.BadInputError, match=rf"{shards[1]}: truncated or corrupt shard after 1 records"):
        data.read_tfrecords(meta)


# --- Non-finite and malformed annotations --------------------------------------------


@pytest.mark.parametrize("box", [(1, 1, "inf", 10), (1, "-inf", 10, 10), ("nan", 1, 10, 10)])
def test_voc_non_finite_coordinate_is_a_bad_object_not_a_clipped_box(tmp_path, box):
    root = _voc_tree(tmp_path, {"train": {"a": [("cat", box), ("cat", (1, 1, 10, 10))]}})
    with pytest.raises(data.BadInputError, match="a.xml: non-finite box"):
        data.read_voc(root, "train", ["cat"])
    dataset = data.read_voc(root, "train", ["cat"], bad_objects="skip")
    assert dataset.issues == {"non-finite box": 1} and dataset.num_boxes() == 1


@pytest.mark.parametrize("bbox", [[1, 1, math.inf, 5], [1, 1, 5, math.nan], [-math.inf, 1, 5, 5]])
def test_coco_non_finite_bbox_is_a_bad_object_not_a_clipped_box(tmp_path, bbox):
    path, images = _coco_tree(tmp_path, [bbox, [1, 1, 5, 5]])
    with pytest.raises(data.BadInputError, match="instances.json.*non-finite box"):
        data.read_coco(path, images)
    dataset = data.read_coco(path, images, bad_objects="skip")
    assert dataset.issues == {"non-finite box": 1} and dataset.num_boxes() == 1


def test_coco_json_without_annotations_is_an_error_naming_the_file(tmp_path):
    path, images = _coco_tree(tmp_path)
    with open(path) as f:
        content = json.load(f)
    del content["annotations"]
    with open(path, "w") as f:
        json.dump(content, f)
    with pytest.raises(data.BadInputError, match="instances.json: not a COCO instances file.*'annotations'"):
        data.read_coco(path, images)


@pytest.mark.parametrize("file_name", ["../a.jpg", "sub/../../images/a.jpg", "/etc/passwd"])
def test_coco_file_name_leading_outside_the_image_folder_is_rejected(tmp_path, file_name):
    path, images = _coco_tree(tmp_path / "d", [[1, 1, 5, 5]], file_name=file_name)
    with pytest.raises(data.BadInputError, match="instances.json: unsafe file_name.*outside the image folder"):
        data.read_coco(path, images)
    dataset = data.read_coco(path, images, bad_files="skip")
    assert len(dataset) == 0 and dataset.issues == {"unsafe file_name": 1}


# --- PNG images ------------------------------------------------------------------------


def _png(bits):
    pixels = _pixels(dtype=np.uint16 if bits == 16 else np.uint8)
    expected = (pixels >> 8).astype(np.uint8) if bits == 16 else pixels  # 16 bit: high byte
    return tf.io.encode_png(pixels).numpy(), expected


def _decoded(source):
    images, _ = next(iter(data.validation_pipeline(source, image_size=WIDTH, batch_size=1)))
    return images


@pytest.mark.parametrize("bits", [8, 16])
def test_png_images_are_read_in_voc_coco_and_tfrecord_datasets(tmp_path, bits):
    png, expected = _png(bits)
    expected = tf.image.resize(tf.cast(expected, tf.float32), (WIDTH, WIDTH))[None]
    root = _voc_tree(tmp_path / "voc", {"train": {"a": [("cat", (1, 1, 9, 9))]}},
                     images={"a": ("a.png", png)})
    voc_data = data.read_voc(root, "train", ["cat"])
    path, image_dir = _coco_tree(tmp_path / "coco", [[1, 1, 5, 5]], encoded=png)
    coco_data = data.read_coco(path, image_dir)  # a PNG named a.jpg: decoded by content
    meta = data.write_tfrecords(voc_data, str(tmp_path / "tf" / "s"), progress=False)
    for source in (voc_data, coco_data, data.read_tfrecords(meta)):
        np.testing.assert_allclose(_decoded(source), expected, atol=1e-3)


def test_corrupt_png_is_named_as_a_png_not_a_jpeg(tmp_path):
    png, _ = _png(8)
    path, image_dir = _coco_tree(tmp_path, [[1, 1, 5, 5]], encoded=png[:200])
    with pytest.raises(data.BadInputError, match="a.jpg: corrupt or truncated PNG"):
        data.read_coco(path, image_dir)


# --- Messages and counts ---------------------------------------------------------------


def test_bad_input_error_names_the_command_line_flag_that_skips_it(tmp_path):
    root = _voc_tree(tmp_path, {"train": {"a": [("dog", (1, 1, 9, 9))]}})
    with pytest.raises(data.BadInputError, match="--bad_input=skip"):
        data.read_voc(root, "train", ["cat"])


def test_skip_counts_are_printed_at_the_end(tmp_path, monkeypatch, capsys):
    """The data flags of ``keras_scb.evaluate``: read, then the counts at the end."""
    from keras_scb import flags as common_flags

    root = _voc_tree(tmp_path, {"train": {"a": [("dog", (1, 1, 9, 9)), ("cat", (1, 1, "inf", 9))],
                                          "b": [("cat", (1, 1, 9, 9))]}})
    os.remove(os.path.join(root, "JPEGImages", "b.jpg"))
    monkeypatch.setattr(common_flags, "_ISSUES", [])
    with train_flags("--dataset=voc", f"--data_dir={root}", "--class_names=cat", "--bad_input=skip"):
        dataset = common_flags.load_split("train")
    common_flags.print_skipped_input()
    assert len(dataset) == 1
    assert "1 missing image, 1 non-finite box, 1 unknown class" in capsys.readouterr().err


def test_convert_cli_prints_the_skip_counts(tmp_path):
    root = _voc_tree(tmp_path / "voc", {"train": {"a": [("cat", (1, 1, 9, 9))],
                                                  "b": [("cat", (1, 1, 9, 9))]}})
    os.remove(os.path.join(root, "JPEGImages", "b.jpg"))
    result = subprocess.run(
        [sys.executable, "-m", "keras_scb.data.convert", "--format=voc", f"--data_dir={root}",
         "--splits=train", "--bad_files=skip", f"--output={tmp_path / 'out'}", "--noprogress"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Wrote 1 images" in result.stdout and "1 missing image" in result.stdout

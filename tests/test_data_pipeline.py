"""Input pipelines: shapes, target round trip, determinism, TFRecords, fit, distribution."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_scb import anchors as anchors_lib
from keras_scb import data
from keras_scb.box_coding import decode_offsets, tf_ops

TINY_ANCHORS = anchors_lib.AnchorSpec(
    image_size=64, feature_map_sizes=(4, 2), min_sizes=(16, 32), max_sizes=(32, 64),
    aspect_ratios=((2,), (2,)),
)


@pytest.fixture(scope="module")
def bccd_val():
    return data.load_bccd("val")


@pytest.fixture(scope="module")
def coco_val():
    return data.load_coco_subset("val2017")


def _subset(dataset, n):
    return dataclasses.replace(dataset, records=dataset.records[:n])


def _batches(dataset, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(n)]


def test_training_batches_have_the_documented_shapes(bccd_val):
    images, targets = next(iter(data.training_pipeline(
        _subset(bccd_val, 8), "ssd300", batch_size=4, seed=0)))
    assert images.shape == (4, 300, 300, 3) and images.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    assert targets.shape == (4, 8732, 6)
    classes = targets[..., 4].numpy()
    assert set(np.unique(classes)) <= {0, 1, 2, 3} and (classes > 0).any()


def test_pipelines_turn_the_tf_data_autotuner_off(bccd_val):
    # The autotuner intermittently cost SSD300 steps their intra-op parallelism.
    source = _subset(bccd_val, 4)
    for dataset in (
        data.training_pipeline(source, "ssd300", batch_size=2, seed=0),
        data.validation_pipeline(source, batch_size=2, image_size=300),
    ):
        assert dataset.options().autotune.enabled is False


def test_ssd_targets_decode_back_to_the_augmented_ground_truth(bccd_val):
    """decode_offsets of every positive anchor's offsets gives its matched GT box."""
    priors = anchors_lib.get_anchors("ssd300")
    encode = data.ssd_targets("ssd300")

    def targets(boxes, classes):
        return {"ssd": encode(boxes, classes), "boxes": boxes, "classes": classes}

    pipeline = data.training_pipeline(
        _subset(bccd_val, 12), "ssd300", batch_size=4, targets=targets, seed=3)
    for _, batch in _batches(pipeline, 3):
        ssd, boxes, classes = batch["ssd"], batch["boxes"], batch["classes"]
        decoded = decode_offsets(ssd[..., :4], priors, ops=tf_ops()).numpy()
        for b in range(len(ssd)):
            positive = ssd[b, :, 4] > 0
            matched = ssd[b, positive, 5].astype(int)
            np.testing.assert_allclose(decoded[b, positive], boxes[b, matched], atol=2e-4)
            np.testing.assert_array_equal(ssd[b, positive, 4] - 1, classes[b, matched])
            assert np.all(ssd[b, ~positive, 5] == -1)
            real = np.flatnonzero(classes[b] >= 0)
            assert set(matched) <= set(real)
            # Most boxes get anchors (crowded ones can lose a shared best anchor).
            assert len(set(matched)) >= 0.8 * len(real)
            assert np.all(classes[b, len(real):] == -1)
            assert np.all((boxes[b, real] >= 0) & (boxes[b, real] <= 1))


def test_gt_targets_without_augmentation_are_the_records_minus_difficult(coco_val):
    dataset = _subset(coco_val, 12)
    pipeline = data.training_pipeline(
        dataset, image_size=96, batch_size=12, targets="gt", augment=None, shuffle=False,
        seed=0, max_boxes=50)
    (_, gt), = _batches(pipeline, 1)
    assert gt.shape == (12, 50, 5)
    assert sum(r.difficult.sum() for r in dataset.records) > 0  # crowd boxes present
    for record, row in zip(dataset.records, gt):
        keep = ~record.difficult
        n = int(keep.sum())
        np.testing.assert_allclose(row[:n, :4], record.boxes[keep], atol=1e-6)
        np.testing.assert_array_equal(row[:n, 4], record.classes[keep])
        assert np.all(row[n:, 4] == -1) and np.all(row[n:, :4] == 0)
    kept = data.training_pipeline(
        dataset, image_size=96, batch_size=12, targets="gt", augment=None, shuffle=False,
        keep_difficult=True, max_boxes=50)
    (_, gt), = _batches(kept, 1)
    assert int((gt[..., 4] >= 0).sum()) == dataset.num_boxes()


def test_seeded_pipeline_is_reproducible(bccd_val):
    def first_batches(seed):
        return _batches(data.training_pipeline(
            _subset(bccd_val, 8), "ssd300", batch_size=4, seed=seed), 2)

    one, two, other = first_batches(7), first_batches(7), first_batches(8)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(one[0][0], other[0][0])


@pytest.mark.parametrize("from_files", [False, True])
def test_every_pass_draws_new_augmentations_reproducibly(coco_val, coco_tfrecords, from_files):
    source = coco_tfrecords if from_files else coco_val

    def two_passes():
        pipeline = data.training_pipeline(
            source, image_size=48, batch_size=4, targets="gt", shuffle=False, seed=5)
        return [_batches(pipeline, 1)[0][0] for _ in range(2)]

    first, second = two_passes()
    assert not np.allclose(first, second)  # same images, new augmentation
    again = two_passes()
    np.testing.assert_array_equal(first, again[0])
    np.testing.assert_array_equal(second, again[1])


def test_validation_keeps_order_ids_sizes_and_ground_truth(coco_val):
    batches = _batches(data.validation_pipeline(coco_val, image_size=128, batch_size=16), 10)
    assert [len(b[0]) for b in batches] == [16, 16, 16, 1]
    info = {k: np.concatenate([b[1][k] for b in batches]) for k in batches[0][1]}
    records = coco_val.records
    assert info["image_id"].tolist() == [r.image_id for r in records]
    assert info["height"].tolist() == [r.height for r in records]
    assert info["width"].tolist() == [r.width for r in records]
    g = coco_val.max_boxes()
    assert info["boxes"].shape == (49, g, 4)
    for i, r in enumerate(records):
        n = len(r.classes)
        np.testing.assert_array_equal(info["boxes"][i, :n], r.boxes)
        np.testing.assert_array_equal(info["classes"][i, :n], r.classes)
        np.testing.assert_array_equal(info["difficult"][i, :n], r.difficult)
        assert np.all(info["classes"][i, n:] == -1)
    image = tf.image.decode_jpeg(tf.io.read_file(records[0].image), channels=3)
    np.testing.assert_allclose(
        batches[0][0][0], tf.image.resize(tf.cast(image, tf.float32), (128, 128)), atol=1e-3)


def test_validation_targets_skip_difficult_boxes(coco_val):
    dataset = _subset(coco_val, 20)
    images, info = next(iter(data.validation_pipeline(
        dataset, "ssd300", batch_size=20, targets="ssd")))
    targets = info["targets"].numpy()
    assert targets.shape == (20, 8732, 6)
    matched = targets[..., 5].astype(int)
    difficult = info["difficult"].numpy()
    for b in range(20):
        used = set(matched[b][matched[b] >= 0].tolist())
        assert not used & set(np.flatnonzero(difficult[b]).tolist())
    assert difficult.any()


@pytest.fixture(scope="module")
def coco_tfrecords(coco_val, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("tfrecords") / "val2017")
    return data.write_tfrecords(coco_val, prefix, num_shards=4, progress=False)


def test_tfrecords_give_the_same_validation_batches(coco_val, coco_tfrecords):
    source = data.read_tfrecords(coco_tfrecords)
    assert len(source.files) == 4 and source.num_records == 49
    assert source.class_names == coco_val.class_names
    assert source.category_ids == coco_val.category_ids
    from_files = _batches(data.validation_pipeline(coco_tfrecords, image_size=64, batch_size=8), 10)
    in_memory = _batches(data.validation_pipeline(coco_val, image_size=64, batch_size=8), 10)
    for a, b in zip(from_files, in_memory):
        np.testing.assert_array_equal(a[0], b[0])
        for key in b[1]:
            np.testing.assert_array_equal(a[1][key], b[1][key])


def test_tfrecord_pipelines_shard_by_file(coco_val, coco_tfrecords):
    from tensorflow.python.data.experimental.ops import distribute as tf_distribute

    validation = data.validation_pipeline(coco_tfrecords, image_size=32, batch_size=4)
    seen = []
    for worker in range(2):
        shard = tf_distribute._AutoShardDataset(validation, num_workers=2, index=worker)
        seen.append([int(i) for _, info in shard for i in info["image_id"]])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(
        int(i) for _, info in validation for i in info["image_id"])
    # Training: identify each image by its ground truth (no augmentation).
    def key(boxes, classes):
        return tuple(np.round(boxes, 4).ravel().tolist()) + tuple(classes.tolist())

    names = {key(r.boxes[~r.difficult], r.classes[~r.difficult]): r.image_id for r in coco_val.records}
    assert len(names) == len(coco_val)
    training = data.training_pipeline(
        coco_tfrecords, image_size=32, batch_size=1, targets="gt", augment=None, shuffle_buffer=8)
    seen = []
    for worker in range(2):
        shard = tf_distribute._AutoShardDataset(training, num_workers=2, index=worker)
        gts = [gt[0].numpy() for _, gt in shard]
        seen.append([names[key(g[g[:, 4] >= 0, :4], g[g[:, 4] >= 0, 4].astype(int))] for g in gts])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(r.image_id for r in coco_val.records)


def test_distributed_dataset_feeds_a_strategy(bccd_val):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    pipeline = data.training_pipeline(_subset(bccd_val, 4), "ssd300", batch_size=2, seed=0)
    images, targets = next(iter(strategy.experimental_distribute_dataset(pipeline)))
    assert images.shape == (2, 300, 300, 3) and targets.shape == (2, 8732, 6)


FIT_SCRIPT = """
import math

import keras
from keras import layers, ops
from keras_scb import anchors, data

spec = anchors.AnchorSpec(image_size=64, feature_map_sizes=(4, 2), min_sizes=(16, 32),
                          max_sizes=(32, 64), aspect_ratios=((2,), (2,)))
num_anchors = spec.num_anchors()
pipeline = data.training_pipeline(
    data.make_synthetic(8, image_size=(64, 64), seed=0), spec, batch_size=4, seed=0)
inputs = keras.Input((64, 64, 3))
x = layers.Conv2D(4, 3, strides=4, activation="relu")(inputs / 255.0)
x = layers.GlobalAveragePooling2D()(x)
outputs = layers.Reshape((num_anchors, 8))(layers.Dense(num_anchors * 8)(x))
model = keras.Model(inputs, outputs)

def loss(y_true, y_pred):
    positive = ops.cast(y_true[..., 4] > 0, "float32")[..., None]
    return ops.mean(positive * (y_true[..., :4] - y_pred[..., :4]) ** 2)

model.compile(optimizer="sgd", loss=loss)
history = model.fit(pipeline, epochs=2, verbose=0, shuffle=False)
losses = history.history["loss"]
finite = all(math.isfinite(v) and v >= 0 for v in losses)
print(keras.backend.backend(), len(losses), finite)
"""


def test_pipeline_feeds_model_fit_under_tensorflow():
    namespace = {}
    exec(compile(FIT_SCRIPT, "fit_script", "exec"), namespace)
    assert (namespace["keras"].backend.backend(), len(namespace["losses"])) == ("tensorflow", 2)
    assert namespace["finite"], namespace["losses"]


def test_pipeline_feeds_model_fit_under_jax(python_subprocess):
    out = python_subprocess(FIT_SCRIPT, env={"KERAS_BACKEND": "jax"})
    assert out.split()[-3:] == ["jax", "2", "True"]


def test_convert_cli_writes_shards_that_the_pipeline_reads(tmp_path):
    prefix = str(tmp_path / "bccd-test")
    result = subprocess.run(
        [sys.executable, "-m", "keras_scb.data.convert", "--format=voc",
         f"--data_dir={data.bccd_root()}", "--splits=test",
         "--class_names=RBC,WBC,Platelets", f"--output={prefix}", "--num_shards=3"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "72/72" in result.stdout  # the progress bar's last state
    with open(prefix + ".json") as f:
        meta = json.load(f)
    assert meta["num_records"] == 72 and len(meta["files"]) == 3
    assert meta["class_names"] == list(data.BCCD_CLASSES)
    reference = data.load_bccd("test", verify_images=False)
    assert meta["num_boxes"] == reference.num_boxes()
    images, targets = next(iter(data.training_pipeline(prefix + ".json", "ssd300", batch_size=4)))
    assert images.shape == (4, 300, 300, 3) and targets.shape == (4, 8732, 6)

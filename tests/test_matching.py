import numpy as np
import pytest
import tensorflow as tf

from keras_scb.anchors import get_anchors
from keras_scb.box_coding import decode_offsets, tf_ops
from keras_scb.matching import encode_targets, iou, pairwise_iou

from reference import encode, match, random_boxes

TIE = 1e-6


def pad_batch(images):
    g = max(1, max(len(c) for _, c in images))
    boxes = np.zeros((len(images), g, 4), np.float32)
    classes = -np.ones((len(images), g), np.int32)
    for i, (b, c) in enumerate(images):
        boxes[i, : len(c)], classes[i, : len(c)] = b, c
    return boxes, classes


def assert_matching_explained(ours, ref, overlaps, threshold):
    """Every anchor where ours and the reference differ must be an IoU tie:
    a near-best anchor of a forced box, two near-equal boxes, or IoU at the threshold."""
    near_best = overlaps >= overlaps.max(axis=1, keepdims=True) - TIE if len(overlaps) else None
    differing = np.flatnonzero(ours != ref)
    assert len(differing) <= 2 * len(overlaps), differing
    for a in differing:
        mine, theirs = ours[a], ref[a]
        forced_tie = any(g >= 0 and near_best[g, a] for g in (mine, theirs))
        value = [overlaps[g, a] if g >= 0 else None for g in (mine, theirs)]
        box_tie = None not in value and abs(value[0] - value[1]) < TIE
        threshold_tie = any(v is not None and abs(v - threshold) < TIE for v in value)
        assert forced_tie or box_tie or threshold_tie, (a, mine, theirs, value)


@pytest.mark.parametrize("preset,seed", [("ssd300", 0), ("ssd300", 1), ("ssd512", 2)])
def test_matching_and_offsets_against_numpy_reference(preset, seed):
    rng = np.random.default_rng(seed)
    anchors = get_anchors(preset)
    images = [random_boxes(rng) for _ in range(6)]
    boxes, classes = pad_batch(images)
    targets = encode_targets(boxes, classes, anchors).numpy()
    assert targets.shape == (len(images), len(anchors), 6)
    checked_offsets = 0
    for i, (b, c) in enumerate(images):
        ref, overlaps = match(boxes[i], classes[i], anchors)
        ours = targets[i, :, 5].astype(int)
        assert_matching_explained(ours, ref, overlaps, 0.5)
        # Class targets follow the matched ids.
        expected_class = np.where(ours >= 0, classes[i][np.maximum(ours, 0)] + 1, 0)
        np.testing.assert_array_equal(targets[i, :, 4], expected_class)
        for a in np.flatnonzero(ours >= 0):
            want = encode(boxes[i, ours[a]].astype(np.float64), anchors[a].astype(np.float64))
            np.testing.assert_allclose(targets[i, a, :4], want, rtol=1e-5, atol=1e-5)
            checked_offsets += 1
        assert np.all(targets[i, ours < 0, :4] == 0)
    assert checked_offsets > 0


def test_later_box_overwrites_forced_anchor_and_padding_never_matches():
    anchors = get_anchors("ssd300")
    tiny = [0.50, 0.50, 0.505, 0.505]  # far below threshold with every anchor
    boxes = np.array([[tiny, tiny, tiny]], np.float32)
    classes = np.array([[4, 7, -1]], np.int32)
    t = encode_targets(boxes, classes, anchors).numpy()[0]
    owners = t[t[:, 5] >= 0]
    # Both boxes force the same anchor; box 1 comes later and wins; padding row 2 never matches.
    assert len(owners) == 1 and owners[0, 5] == 1 and owners[0, 4] == 8


def test_all_padding_image_is_all_background():
    anchors = get_anchors("ssd300")
    t = encode_targets(np.zeros((1, 3, 4), np.float32), -np.ones((1, 3), np.int32), anchors)
    assert np.all(t.numpy()[..., 4] == 0) and np.all(t.numpy()[..., 5] == -1)


def test_single_image_and_tf_function_and_dataset_map():
    anchors = get_anchors("ssd300")
    boxes = np.array([[0.1, 0.2, 0.4, 0.6], [0.6, 0.1, 0.9, 0.3]], np.float32)
    classes = np.array([2, 5], np.int32)
    eager = encode_targets(boxes, classes, anchors)
    assert eager.shape == (8732, 6)
    graph = tf.function(lambda b, c: encode_targets(b, c, anchors))(boxes, classes)
    ds = tf.data.Dataset.from_tensors((boxes, classes)).map(
        lambda b, c: encode_targets(b, c, anchors)
    )
    # Graph rewrites may fuse the float math differently; assignments must not change.
    for other in (graph.numpy(), next(iter(ds)).numpy()):
        np.testing.assert_array_equal(eager.numpy()[:, 4:], other[:, 4:])
        np.testing.assert_allclose(eager.numpy()[:, :4], other[:, :4], atol=1e-5)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(3)
    anchors = get_anchors("ssd300")
    boxes, classes = pad_batch([random_boxes(rng, max_pad=0) for _ in range(4)])
    t = encode_targets(boxes, classes, anchors).numpy()
    decoded = decode_offsets(t[..., :4], anchors, ops=tf_ops()).numpy()
    for i in range(len(t)):
        pos = t[i, :, 5] >= 0
        want = boxes[i][t[i, pos, 5].astype(int)]
        np.testing.assert_allclose(decoded[i, pos], want, atol=1e-5)


def test_iou_against_reference():
    rng = np.random.default_rng(4)
    a, _ = random_boxes(rng, max_boxes=10, max_pad=0)
    b, _ = random_boxes(rng, max_boxes=10, max_pad=0)
    from reference import iou_matrix

    np.testing.assert_allclose(iou(a, b).numpy(), iou_matrix(a, b.astype(np.float64)), atol=1e-6)


def test_one_iou_in_every_namespace():
    """numpy (evaluation), tf_ops (tf.data) and keras.ops (losses) give the same
    IoU, and the corner order does not matter."""
    import keras

    from reference import iou_matrix

    rng = np.random.default_rng(5)
    a, _ = random_boxes(rng, max_boxes=10, max_pad=0)
    b, _ = random_boxes(rng, max_boxes=10, max_pad=0)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = iou_matrix(a64, b64)
    np.testing.assert_allclose(pairwise_iou(a64, b64), want, rtol=1e-12, atol=1e-12)
    swap = [1, 0, 3, 2]  # [xmin, ymin, xmax, ymax] <-> [ymin, xmin, ymax, xmax]
    np.testing.assert_allclose(pairwise_iou(a64[:, swap], b64[:, swap]), want, atol=1e-12)
    for ops in (tf_ops(), keras.ops):
        got = pairwise_iou(keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b), ops)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, atol=1e-6)
    # Leading batch dims broadcast as in match_anchors.
    batched = pairwise_iou(np.stack([a64, a64]), b64)
    np.testing.assert_allclose(batched, np.stack([want, want]), atol=1e-12)

"""Properties of the SSD augmentation, checked with numpy and against the pixels."""

import numpy as np
import pytest
import tensorflow as tf

from keras_scb.data import augment as aug

SEEDS = [tf.constant([i, 11], tf.int64) for i in range(150)]


def _np_iou(boxes, window):
    lo = np.maximum(boxes[:, :2], window[:2])
    hi = np.minimum(boxes[:, 2:], window[2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + np.prod(window[2:] - window[:2]) - inter)


def _random_boxes(rng, n, smallest=0.03, largest=0.8):
    centre = rng.uniform(0.1, 0.9, (n, 2))
    size = np.exp(rng.uniform(np.log(smallest), np.log(largest), (n, 2)))
    return np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, 1).astype(np.float32)


@pytest.mark.parametrize("min_iou", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_crop_honours_min_iou_and_shape_limits(min_iou):
    sample = tf.function(
        lambda b, s: aug.sample_crop_window(b, 0.75, s, min_ious=(min_iou,)),
        input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([2], tf.int64)],
    )
    rng = np.random.default_rng(int(min_iou * 10))
    cropped = 0
    for seed in SEEDS[:80]:
        # Small and large boxes, and one near-whole box so that IoU 0.9 is reachable.
        boxes = np.concatenate([
            _random_boxes(rng, int(rng.integers(1, 5)), largest=0.9),
            [np.concatenate([rng.uniform(0, 0.05, 2), rng.uniform(0.95, 1, 2)])],
        ]).astype(np.float32)
        window = sample(boxes, seed).numpy()
        if np.array_equal(window, aug.WHOLE_IMAGE):
            continue
        cropped += 1
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.all((centres > window[:2]) & (centres < window[2:]), axis=1)
        assert np.any(inside & (_np_iou(boxes, window) >= min_iou - 1e-6))
        w, h = window[2:] - window[:2]
        assert 0.3 - 1e-6 <= w <= 1 and 0.3 - 1e-6 <= h <= 1
        assert 0.5 - 1e-6 <= h / w * 0.75 <= 2 + 1e-6
        assert np.all(window >= 0) and np.all(window <= 1)
    # The constraint can be met, so crops must actually happen.
    assert cropped >= 5


def test_unsatisfiable_crop_and_whole_image_mode_keep_the_image():
    tiny = np.array([[0.50, 0.50, 0.52, 0.52]], np.float32)  # IoU with any crop <= 0.005
    for seed in SEEDS[:20]:
        window = aug.sample_crop_window(tiny, 1.0, seed, min_ious=(0.5,))
        np.testing.assert_array_equal(window, aug.WHOLE_IMAGE)
        window = aug.sample_crop_window(_random_boxes(np.random.default_rng(0), 3), 1.0, seed, min_ious=(None,))
        np.testing.assert_array_equal(window, aug.WHOLE_IMAGE)


def test_crop_without_boxes_still_crops():
    empty = np.zeros((0, 4), np.float32)
    windows = [aug.sample_crop_window(empty, 1.0, s, min_ious=(0.5,)).numpy() for s in SEEDS[:10]]
    assert not all(np.array_equal(w, aug.WHOLE_IMAGE) for w in windows)


def test_expand_canvas_contains_the_image_at_one_scale():
    for seed in SEEDS[:50]:
        canvas = aug.sample_expand(seed, prob=1.0, max_expand=4.0).numpy()
        ratio = canvas[2:] - canvas[:2]
        assert np.all(canvas[:2] <= 1e-6) and np.all(canvas[2:] >= 1 - 1e-6)
        assert ratio[0] == pytest.approx(ratio[1]) and 1 <= ratio[0] <= 4


def _white_rectangle():
    image = np.zeros((120, 160, 3), np.float32)
    image[30:70, 40:100] = 255.0
    return image, np.array([[40 / 160, 30 / 120, 100 / 160, 70 / 120]], np.float32)


def test_boxes_follow_the_pixels_through_expand_crop_flip_resize():
    image, box = _white_rectangle()
    config = aug.AugmentConfig(photometric=False)
    run = tf.function(lambda s: aug.augment(image, box, tf.constant([1]), s, 100, config))
    kept = 0
    for seed in SEEDS:
        out, boxes, classes = (t.numpy() for t in run(seed))
        assert out.shape == (100, 100, 3)
        assert np.all(boxes >= 0) and np.all(boxes <= 1)
        if len(boxes) == 0:
            continue
        kept += 1
        assert classes.tolist() == [1]
        ys, xs = np.nonzero(out[..., 0] > 190)  # white; the mean fill is ~124
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 100
        # Bilinear edges blur by about a pixel.
        np.testing.assert_allclose(found, boxes[0], atol=0.015)
    assert kept >= 100


def test_full_augment_stays_in_range_and_is_reproducible():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (90, 120, 3)).astype(np.float32)
    boxes = _random_boxes(rng, 8)
    classes = np.arange(8, dtype=np.int32)
    run = tf.function(lambda s: aug.augment(image, boxes, classes, s, 64))
    outputs = [run(seed) for seed in SEEDS[:40]]
    for out, b, c in outputs:
        assert out.shape == (64, 64, 3)
        assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255
        assert np.all(b.numpy() >= 0) and np.all(b.numpy() <= 1)
        assert np.all(b.numpy()[:, 2:] > b.numpy()[:, :2])
        assert set(c.numpy().tolist()) <= set(range(8))
    again = run(SEEDS[5])
    for first, second in zip(outputs[5], again):
        np.testing.assert_array_equal(first.numpy(), second.numpy())
    assert not np.array_equal(outputs[5][0].numpy(), outputs[6][0].numpy())


def test_flip_twice_is_identity_and_matches_keras_cv():
    import keras_cv

    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
    boxes = _random_boxes(rng, 5)
    flipped = aug.flip_boxes(boxes)
    np.testing.assert_allclose(aug.flip_boxes(flipped).numpy(), boxes, atol=1e-6)
    layer = keras_cv.layers.RandomFlip("horizontal", bounding_box_format="rel_xyxy", rate=1.0)
    reference = layer({
        "images": image[None],
        "bounding_boxes": {"boxes": boxes[None], "classes": np.zeros((1, 5), np.float32)},
    })
    np.testing.assert_allclose(flipped.numpy(), reference["bounding_boxes"]["boxes"].to_tensor()[0], atol=1e-6)
    # augment mirrors the pixels with tf.reverse along the width, as keras-cv does.
    np.testing.assert_allclose(image[:, ::-1], np.asarray(reference["images"])[0])


def test_resize_window_matches_tf_resize_and_fills_outside():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, (48, 64, 3)).astype(np.float32)
    for size in (20, 150):  # down and up
        whole = aug.resize_window(image, tf.constant(aug.WHOLE_IMAGE), size)
        np.testing.assert_allclose(whole, tf.image.resize(image, (size, size)), atol=0.02)
    # A pixel-aligned window is a crop then a resize, except on the border ring
    # where the crop clamps and the window reads the pixels beyond it.
    window = tf.constant([16 / 64, 12 / 48, 48 / 64, 36 / 48])
    np.testing.assert_allclose(
        aug.resize_window(image, window, 40)[1:-1, 1:-1],
        tf.image.resize(image[12:36, 16:48], (40, 40))[1:-1, 1:-1], atol=0.02,
    )
    # The image in the left half of a 2x-wide window; the right half is the fill.
    out = aug.resize_window(image, tf.constant([0.0, 0.0, 2.0, 1.0]), 32).numpy()
    np.testing.assert_allclose(out[:, 17:], np.broadcast_to(aug.MEAN_RGB, out[:, 17:].shape), atol=1e-3)
    np.testing.assert_allclose(out[:, :15], tf.image.resize(image, (32, 16))[:, :15], atol=0.02)


def test_photometric_distort_range_and_determinism():
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    outs = [aug.photometric_distort(image, seed).numpy() for seed in SEEDS[:20]]
    for out in outs:
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(outs[3], aug.photometric_distort(image, SEEDS[3]).numpy())
    assert sum(not np.allclose(out, image) for out in outs) >= 15


def test_photometric_distortion_leaves_the_expand_fill_at_the_mean():
    image = np.full((60, 80, 3), 40.0, np.float32)
    config = aug.AugmentConfig(expand_prob=1.0, min_ious=(None,), flip_prob=0.0)
    run = tf.function(lambda s: aug.augment(image, np.zeros((0, 4), np.float32),
                                            np.zeros((0,), np.int32), s, 64, config))
    recoloured = 0
    for seed in SEEDS[:20]:
        out = run(seed)[0].numpy().reshape(-1, 3)
        colours, counts = np.unique(np.round(out, 2), axis=0, return_counts=True)
        top = colours[np.argsort(counts)[-2:]]
        # Two flat regions (fill and image) cover all but the blended border.
        assert np.sort(counts)[-2:].sum() >= 0.9 * len(out)
        assert any(np.allclose(c, aug.MEAN_RGB, atol=0.01) for c in top)
        image_colour = [c for c in top if not np.allclose(c, aug.MEAN_RGB, atol=0.01)][0]
        recoloured += not np.allclose(image_colour, 40.0, atol=0.5)
    assert recoloured >= 10


@pytest.mark.parametrize(
    "setting,message",
    [
        ({"expand_prob": 1.5}, "expand_prob must lie in [0, 1]; got 1.5."),
        ({"flip_prob": -0.1}, "flip_prob must lie in [0, 1]; got -0.1."),
        ({"max_expand": 0.5}, "max_expand must be >= 1; got 0.5."),
        ({"min_ious": ()}, "min_ious must be None or lie in [0, 1]; got ()."),
        ({"min_ious": (None, 1.2)}, "min_ious must be None or lie in [0, 1]; got (None, 1.2)."),
        ({"crop_trials": 0}, "crop_trials must be >= 1; got 0."),
        ({"min_crop_scale": 0.0}, "min_crop_scale must lie in (0, 1]; got 0.0."),
        ({"max_crop_aspect": 0.9}, "max_crop_aspect must be >= 1; got 0.9."),
    ],
)
def test_config_out_of_range_is_refused_with_its_name(setting, message):
    with pytest.raises(ValueError) as error:
        aug.AugmentConfig(**setting)
    assert str(error.value) == message
    # The bounds themselves are allowed.
    aug.AugmentConfig(expand_prob=0.0, flip_prob=1.0, max_expand=1.0, min_ious=(None, 0.0, 1.0),
                      crop_trials=1, min_crop_scale=1.0, max_crop_aspect=1.0)

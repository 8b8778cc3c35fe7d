"""The augmentation's fast paths against today's reference, seed for seed.

- The lean host path (`augment.augment`, `resize_window` without the float mirror
  pad) against `_reference_augment`, the code it replaced, kept here verbatim:
  bit-identical images, boxes and classes.
- Window decoding (`augment.augment_jpeg`): the same boxes, classes and
  parameters (exactly), pixels equal up to rounding.
- The device photometric distortion (`keras_scb.augment_on_device`): the
  parameters are the host's own draws (`augment.sample_photometric` on the same
  seed, so exactly equal per seed); the pixels equal the host's up to rounding.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_scb import augment_on_device
from keras_scb.data import augment as aug
from keras_scb.data import records

SEEDS = [tf.constant([i, 29], tf.int64) for i in range(40)]


def _reference_resize_window(image, window, size, fill=aug.MEAN_RGB):
    """`resize_window` as it was: float cast, mean subtracted, ``tf.pad`` SYMMETRIC."""
    image = tf.cast(image, tf.float32)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    lo = tf.stack([window[1], window[0]])
    span = tf.stack([window[3] - window[1], window[2] - window[0]])
    mean = tf.constant(fill, tf.float32)
    padded = tf.pad(image - mean, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    last = hw + 1.0
    start = ((lo + 0.5 * span / size) * hw + 0.5) / last
    end = start + span * hw * (size - 1) / (size * last)
    out = tf.image.crop_and_resize(
        padded[None], tf.concat([start, end], 0)[None], [0], [size, size],
        extrapolation_value=0.0,
    )
    return out[0] + mean


def _reference_photometric(image, seed, brightness=32.0, contrast=(0.5, 1.5),
                           saturation=(0.5, 1.5), hue=18.0):
    """`photometric_distort` as it was, drawing and applying in one."""
    seeds = tf.random.experimental.stateless_split(seed, 5)

    def uniform(s, shape=(), lo=0.0, hi=1.0):
        return tf.random.stateless_uniform(shape, s, lo, hi, tf.float32)

    coins = uniform(seeds[0], [5]) < 0.5
    delta = tf.where(coins[0], uniform(seeds[1], (), -brightness, brightness), 0.0)
    factor_c = tf.where(coins[1], uniform(seeds[2], (), *contrast), 1.0)
    image = tf.clip_by_value(image + delta, 0.0, 255.0)

    def scale(x):
        return tf.clip_by_value(x * factor_c, 0.0, 255.0)

    image = tf.cond(coins[4], lambda: scale(image), lambda: image)
    unit = image / 255.0
    factor_s = uniform(seeds[3], (), *saturation)
    unit = tf.cond(coins[2], lambda: tf.image.adjust_saturation(unit, factor_s), lambda: unit)
    shift = uniform(seeds[4], (), -hue / 360.0, hue / 360.0)
    unit = tf.cond(coins[3], lambda: tf.image.adjust_hue(unit, shift), lambda: unit)
    image = tf.clip_by_value(unit * 255.0, 0.0, 255.0)
    return tf.cond(coins[4], lambda: image, lambda: scale(image))


def _reference_augment(image, boxes, classes, seed, size, config):
    """`augment` as it was before the lean path (2026-12, commit 307ef0c)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.cast(image, tf.float32)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    canvas = aug.sample_expand(seeds[1], config.expand_prob, config.max_expand)
    boxes = aug.to_window(boxes, canvas)
    crop = aug.sample_crop_window(
        boxes, hw[0] / hw[1], seeds[2], config.min_ious, config.crop_trials,
        config.min_crop_scale, config.max_crop_aspect,
    )
    boxes, classes = aug.crop_boxes(boxes, classes, crop)
    window = aug.compose(canvas, crop)
    image = _reference_resize_window(image, window, size)
    if config.photometric:
        image = tf.where(
            aug._inside_image(window, size), _reference_photometric(image, seeds[0]),
            tf.constant(aug.MEAN_RGB),
        )
    flip = tf.random.stateless_uniform([], seeds[3]) < config.flip_prob
    return tf.cond(
        flip,
        lambda: (tf.reverse(image, [1]), aug.flip_boxes(boxes), classes),
        lambda: (image, boxes, classes),
    )


def _bccd_jpegs(n):
    from keras_scb.data import load_bccd

    dataset = load_bccd("val")
    return [(open(r.image, "rb").read(), r.boxes.astype(np.float32), r.classes.astype(np.int32))
            for r in dataset.records[:n]]


def _windows(rng, n):
    """Crops, whole images and zoomed-out canvases, as `sample_augmentation` draws them."""
    windows = [np.array(aug.WHOLE_IMAGE, np.float32)]
    for k in range(n):
        if k % 2:
            ratio = rng.uniform(1, 4)
            offset = rng.uniform(0, ratio - 1, 2)
            windows.append(np.array([*-offset, *(ratio - offset)], np.float32))
        else:
            side = rng.uniform(0.3, 1, 2)
            corner = rng.uniform(0, 1, 2) * (1 - side)
            windows.append(np.array([*corner, *(corner + side)], np.float32))
    return windows


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_lean_resize_window_is_bit_identical_to_the_mirror_pad(dtype):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (61, 83, 3)).astype(dtype)
    lean = tf.function(aug.resize_window, reduce_retracing=True)
    reference = tf.function(_reference_resize_window, reduce_retracing=True)
    for window in _windows(rng, 30):
        for size in (40, 100):
            np.testing.assert_array_equal(
                lean(image, window, size).numpy(), reference(image, window, size).numpy()
            )


@pytest.mark.parametrize("config", [
    aug.AugmentConfig(),
    aug.AugmentConfig(photometric=False),
    aug.AugmentConfig(expand_prob=0.0, min_ious=(None,)),
], ids=["full", "geometric", "resize_and_flip"])
def test_lean_augment_is_bit_identical_to_the_reference(config):
    """Seed for seed on real JPEGs, in a graph (as in the pipeline's map)."""
    images = [(records.decode_image(data), boxes, classes)
              for data, boxes, classes in _bccd_jpegs(3)]
    lean = tf.function(lambda i, b, c, s: aug.augment(i, b, c, s, 96, config))
    reference = tf.function(lambda i, b, c, s: _reference_augment(i, b, c, s, 96, config))
    for k, seed in enumerate(SEEDS[:24]):
        image, boxes, classes = images[k % len(images)]
        for mine, theirs in zip(lean(image, boxes, classes, seed),
                                reference(image, boxes, classes, seed)):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_window_decoding_keeps_the_geometry_and_the_pixels():
    jpegs = _bccd_jpegs(3)
    config = aug.AugmentConfig()
    whole = tf.function(lambda d, b, c, s: aug.augment_pixels(
        records.decode_image(d), b, c, s, 96, config))
    window = tf.function(lambda d, b, c, s: aug.augment_jpeg(d, b, c, s, 96, config))
    for k, seed in enumerate(SEEDS):
        data, boxes, classes = jpegs[k % len(jpegs)]
        (image, *rest), (fast_image, *fast_rest) = whole(data, boxes, classes, seed), window(
            data, boxes, classes, seed)
        for exact, fast in zip(rest, fast_rest):  # boxes, classes, parameters
            np.testing.assert_array_equal(exact.numpy(), fast.numpy())
        # Positions computed in the decoded region's frame: rounding only.
        np.testing.assert_allclose(fast_image.numpy(), image.numpy(), atol=0.02)


def test_decode_and_crop_reads_the_same_pixels_as_a_full_decode():
    """Inside a one-pixel border: libjpeg's chroma upsampling differs on a crop's
    outer columns (by up to ~6 levels here), which `read_region`'s margin keeps
    `resize_window` from reading."""
    rng = np.random.default_rng(1)
    for data, _, _ in _bccd_jpegs(2):
        full = records.decode_image(data).numpy()
        hw = tf.image.extract_jpeg_shape(data)[:2]
        for window in _windows(rng, 8):
            region, _ = aug.read_region(tf.constant(window), hw, 96)
            top, left, height, width = region.numpy()
            assert height >= 1 and width >= 1
            np.testing.assert_array_equal(
                tf.image.decode_and_crop_jpeg(data, region, channels=3).numpy()[1:-1, 1:-1],
                full[top:top + height, left:left + width][1:-1, 1:-1],
            )


def test_device_photometric_is_the_host_distortion():
    """Same seeds: the host's parameters, the host's pixels up to float rounding."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (70, 90, 3)).astype(np.uint8)
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]], np.float32)
    classes = np.array([0, 1], np.int32)
    config = aug.AugmentConfig(expand_prob=0.7)  # the fill must stay the mean too
    run = tf.function(lambda s, on_host: aug.augment_pixels(
        image, boxes, classes, s, 48, config, on_host), reduce_retracing=True)
    host, plain, params = [], [], []
    for seed in SEEDS:
        distorted, host_boxes, _, host_params = run(seed, True)
        undistorted, device_boxes, _, device_params = run(seed, False)
        np.testing.assert_array_equal(host_params.numpy(), device_params.numpy())
        np.testing.assert_array_equal(host_boxes.numpy(), device_boxes.numpy())
        colour_seed = tf.random.experimental.stateless_split(seed, 4)[0]  # as augment
        np.testing.assert_array_equal(
            device_params.numpy()[:7], aug.sample_photometric(colour_seed).numpy())
        host.append(distorted.numpy())
        plain.append(undistorted.numpy())
        params.append(device_params.numpy())
    params = np.stack(params)
    # Every branch is exercised: each coin comes up both ways over the seeds.
    for column in (2, 4, 6):
        assert 0 < params[:, column].sum() < len(SEEDS)
    assert 0 < np.sum(params[:, 0] != 0) < len(SEEDS)
    device = np.asarray(augment_on_device.photometric(np.stack(plain), params))
    np.testing.assert_allclose(device, np.stack(host), atol=2e-3)


def test_device_photometric_refuses_a_wrong_parameter_width():
    with pytest.raises(ValueError, match=r"params must be \(B, 11\)"):
        augment_on_device.photometric(np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 7)))


def test_pipeline_window_decoding_and_device_colour_keep_the_batches():
    """``decode="window", photometric="device"``: the same ground truth, and after
    `augment_on_device.photometric` the reference path's images up to rounding."""
    import dataclasses

    from keras_scb.data import load_bccd, pipeline

    dataset = load_bccd("val")
    dataset = dataclasses.replace(dataset, records=dataset.records[:8])
    common = dict(anchors=None, image_size=96, targets="gt", seed=1, batch_size=4)
    reference = pipeline.training_pipeline(dataset, **common)
    fast = pipeline.training_pipeline(dataset, decode="window", photometric="device", **common)
    for (images, gt), ((plain, params), fast_gt) in zip(reference.take(2), fast.take(2)):
        assert params.shape == (4, augment_on_device.NUM_PARAMS)
        np.testing.assert_array_equal(np.asarray(gt), np.asarray(fast_gt))
        recoloured = np.asarray(augment_on_device.photometric(plain, params))
        np.testing.assert_allclose(recoloured, images.numpy(), atol=0.05)


@pytest.mark.parametrize("options,message", [
    (dict(decode="crop"), "decode must be 'full' or 'window'; got 'crop'."),
    (dict(photometric="gpu"), "photometric must be 'host' or 'device'; got 'gpu'."),
    (dict(photometric="device", augment=None),
     "photometric='device' needs augment with photometric=True."),
])
def test_pipeline_refuses_unknown_options(options, message):
    from keras_scb.data import pipeline
    from keras_scb.data.synthetic import make_synthetic

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipeline.training_pipeline(make_synthetic(2, seed=0), image_size=32, **options)


def _tiny_detector(num_classes):
    """A 64 px two-map SSD (as in test_toy_detector, unregistered)."""
    import keras

    from keras_scb.anchors import AnchorSpec
    from keras_scb.models import Detector
    from keras_scb.models.heads import multibox_head

    spec = AnchorSpec(image_size=64, feature_map_sizes=(8, 4), min_sizes=(12, 28),
                      max_sizes=(28, 56), aspect_ratios=((2,), (2,)))
    images = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(images)
    x = keras.layers.Conv2D(16, 3, strides=4, padding="same", activation="relu")(x)
    fine = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(x)
    coarse = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(fine)
    outputs = multibox_head([fine, coarse], spec.anchors_per_location(), num_classes)
    return Detector(images, outputs, anchor_spec=spec, num_classes=num_classes)


def _train(dataset, seed, photometric, steps=12, epochs=3):
    """Final-epoch loss of a tiny SSD trained with colour on the host or the device."""
    import keras

    from keras_scb.data import pipeline
    from keras_scb.losses import ScaleBalancedLoss
    from keras_scb.on_device import MatchOnDevice

    keras.utils.set_random_seed(seed)
    detector = _tiny_detector(len(dataset.class_names))
    model = detector if photometric == "host" else augment_on_device.AugmentOnDevice(detector)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=MatchOnDevice(ScaleBalancedLoss(), detector.anchor_spec))
    data = pipeline.training_pipeline(dataset, detector.anchors, image_size=64, targets="gt",
                                      batch_size=8, seed=seed, repeat=True,
                                      photometric=photometric)
    history = model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0)
    return history.history["loss"][-1]


@pytest.mark.slow
def test_training_with_device_colour_reaches_the_host_loss():
    """A/A: with the same seed the two paths see the same batches up to rounding,
    so their losses agree closely; across seeds the device path's mean loss lies
    within the host path's seed-to-seed band. ~40 s on 2 cores."""
    from keras_scb.data.synthetic import make_synthetic

    dataset = make_synthetic(32, seed=0, image_size=(80, 96), size_range=(10, 40),
                             objects_per_image=(1, 3))
    seeds = (0, 1, 2)
    host = [_train(dataset, s, "host") for s in seeds]
    device = [_train(dataset, s, "device") for s in seeds]
    for h, d in zip(host, device):
        assert d == pytest.approx(h, rel=2e-3)
    band = max(host) - min(host)
    assert band > 0  # the seeds differ, so the band is a real A/A spread
    assert abs(np.mean(device) - np.mean(host)) <= band


def test_padding_that_cuts_boxes_says_how_many(caplog):
    """Padded ground truth (for on-device matching) keeps ``max_boxes`` per image; the
    boxes beyond it are counted in a warning, never dropped silently."""
    import logging

    from keras_scb.data import pipeline
    from keras_scb.data.synthetic import make_synthetic

    dataset = make_synthetic(4, seed=0, objects_per_image=(3, 3))
    with caplog.at_level(logging.WARNING):
        pipeline.training_pipeline(dataset, image_size=32, targets="gt", max_boxes=1)
    assert "max_boxes=1 cuts up to 8 boxes on 4 of 4 images (the most on one image: 3)." in (
        caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipeline.training_pipeline(dataset, image_size=32, targets="gt")
    assert "cuts" not in caplog.text

"""``tf.data`` input pipelines for training and evaluation.

Training: (shuffle) -> decode the image (JPEG, PNG, ...; see `records`) -> drop
``difficult`` boxes -> `augment` -> encode the targets (``"ssd"``) or pad the
boxes to ``max_boxes`` -> batch -> (encode the padded targets) -> prefetch; maps
in parallel. ``decode="window"`` draws the augmentation first and decodes only
the JPEG pixels its window reads; ``photometric="device"`` leaves the colour
distortion to the train step (`keras_scb.augment_on_device`).
Evaluation: decode -> resize -> pad -> batch, keeping each image's id, original
size and ground truth.

Images come out float32 ``(B, S, S, 3)`` RGB in ``[0, 255]`` (the models normalise
internally). Targets are pluggable: ``targets="ssd"`` gives the
`keras_scb.matching.encode_targets` tensor ``(B, A, 6)`` for the anchors,
``targets="gt"`` the padded ground truth ``(B, G, 5)``
``[xmin, ymin, xmax, ymax, class]`` (class -1 on padding rows) for losses that
match on the fly (RefineDet), and a callable ``f(boxes (B, G, 4), classes (B, G))``
anything else. ``"ssd"`` targets are encoded per image on the unpadded boxes (the
matching cost grows with the box rows); the others on the padded batch.

Sources: an in-memory `Dataset` (images read from their paths or bytes), a
`TFRecordSource`, or the path of a TFRecord metadata file. Both pipelines feed
``model.fit`` / ``predict`` under any Keras backend, and
``strategy.experimental_distribute_dataset``: TFRecord pipelines are sharded by
file (write at least one shard per worker), in-memory ones by element.

Randomness: every image gets a stateless seed drawn from ``tf.data.Dataset.random``
(new draws on every pass) and all augmentation ops are stateless; with ``seed``
set, the shuffle, the seeds and the element order (``deterministic``) are fixed,
so two runs give identical batches.
"""

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
from absl import logging

from keras_scb import anchors as anchors_lib
from keras_scb import matching
from keras_scb.data import augment as augment_lib
from keras_scb.data import records as records_lib
from keras_scb.data import tfrecord

AUTOTUNE = tf.data.AUTOTUNE

Source = Union[records_lib.Dataset, tfrecord.TFRecordSource, str]
Targets = Union[str, Callable]


Anchors = Union[str, anchors_lib.AnchorSpec, np.ndarray, Any]


def _anchor_source(anchors):
    """A detector (anything with an ``anchor_spec``) -> its `AnchorSpec`; else unchanged."""
    spec = getattr(anchors, "anchor_spec", None)
    return anchors if spec is None else spec


def ssd_targets(anchors: Anchors, iou_threshold: float = matching.MATCH_IOU,
                variances: Sequence[float] = matching.VARIANCES) -> Callable:
    """Target encoder ``(boxes (B, G, 4), classes (B, G)) -> (B, A, 6)``.

    Args:
        anchors: a detector, preset name, `AnchorSpec`, or ``(A, 4)``
            ``[cx, cy, w, h]`` array.
    """
    anchors = _anchor_source(anchors)
    if isinstance(anchors, (str, anchors_lib.AnchorSpec)):
        anchors = anchors_lib.get_anchors(anchors)
    anchors = tf.constant(np.asarray(anchors, np.float32))

    def encode(boxes, classes):
        return matching.encode_targets(boxes, classes, anchors, iou_threshold, variances)

    return encode


def padded_gt_targets(boxes: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """``(B, G, 4)``, ``(B, G)`` -> ``(B, G, 5)`` ``[xmin, ymin, xmax, ymax, class]``."""
    return tf.concat([boxes, tf.cast(classes, tf.float32)[..., None]], axis=-1)


def _image_size(anchors, image_size):
    anchors = _anchor_source(anchors)
    if isinstance(anchors, (str, anchors_lib.AnchorSpec)):
        spec_size = anchors_lib.get_anchor_spec(anchors).image_size
        if image_size is not None and image_size != spec_size:
            raise ValueError(
                f"image_size={image_size} but anchors {anchors!r} are for {spec_size}."
            )
        return spec_size
    if image_size is None:
        raise ValueError(
            "anchors is an array (or None): pass image_size=, or pass the detector, "
            "its AnchorSpec or a preset name as anchors."
        )
    return int(image_size)


def _encoder(targets, anchors):
    """Returns ``(encode, per_image)``.

    ``"ssd"`` targets are encoded image by image on the unpadded boxes, in the
    parallel per-image map: matching cost grows with the number of box rows, and
    the padded batch has several times more rows than boxes. The others may
    depend on the padded shape, so they see the padded batch.
    """
    if callable(targets):
        return targets, False
    if targets == "gt":
        return padded_gt_targets, False
    if targets == "ssd":
        if anchors is None:
            raise ValueError("targets='ssd' needs anchors.")
        return ssd_targets(anchors), True
    raise ValueError(f"targets must be 'ssd', 'gt' or a callable; got {targets!r}.")


def _encode_image(encode, boxes, classes):
    """Encodes one image's ``(N, 4)`` boxes; a padding row keeps ``N = 0`` valid."""
    boxes = tf.concat([boxes, tf.zeros([1, 4])], axis=0)
    classes = tf.concat([classes, tf.constant([-1], tf.int32)], axis=0)
    return encode(boxes[None], classes[None])[0]


def _memory_elements(dataset):
    """Element dicts (see `tfrecord.parse_example`) of an in-memory `Dataset`."""
    records = dataset.records
    if not records:
        raise ValueError("The dataset has no records.")
    if len({isinstance(r.image, str) for r in records}) > 1:
        raise ValueError("Records mix image paths and image bytes; use one kind.")
    lengths = [len(r.classes) for r in records]

    def ragged(arrays, dtype, tail=()):
        flat = np.concatenate([a.reshape((-1,) + tail) for a in arrays]).astype(dtype)
        return tf.RaggedTensor.from_row_lengths(flat, lengths)

    return tf.data.Dataset.from_tensor_slices({
        "image": [r.image for r in records],
        "image_id": np.array([r.image_id for r in records], np.int64),
        "height": np.array([r.height for r in records], np.int32),
        "width": np.array([r.width for r in records], np.int32),
        "boxes": ragged([r.boxes for r in records], np.float32, (4,)),
        "classes": ragged([r.classes for r in records], np.int32),
        "difficult": ragged([r.difficult for r in records], bool),
        "areas": ragged([r.areas for r in records], np.float64),
    })


def _random_salts(seed):
    """An endless int64 stream, drawn anew on every pass over the dataset."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)


def _elements(source, training, shuffle=False, seed=None, shuffle_buffer=0):
    """The source as element dicts (see `tfrecord.parse_example`).

    For training each element comes as ``(element, seed)`` with a ``(2,)`` int64
    stateless seed that differs between passes; ``seed`` fixes the sequence.

    Returns:
        ``(elements, images_are_paths, max_boxes, shard_policy)``.
    """
    if isinstance(source, str):
        source = tfrecord.read_tfrecords(source)
    if isinstance(source, records_lib.Dataset):
        elements = _memory_elements(source)
        if shuffle:
            elements = elements.shuffle(len(source), seed, reshuffle_each_iteration=True)
        if training:
            elements = tf.data.Dataset.zip(elements, _random_salts(seed).batch(2))
        return (
            elements, isinstance(source.records[0].image, str), source.max_boxes(),
            tf.data.experimental.AutoShardPolicy.DATA,
        )
    if not isinstance(source, tfrecord.TFRecordSource):
        raise TypeError(
            f"source must be a Dataset, a TFRecordSource or a metadata path; got {type(source)}."
        )
    files = tf.data.Dataset.from_tensor_slices(list(source.files))
    if shuffle:
        files = files.shuffle(len(source.files), seed, reshuffle_each_iteration=True)
    if training:
        # FILE auto-sharding walks up from the output to the reader and passes
        # only through single-input ops, so the randomness joins above the reader:
        # each file visit draws a salt and its k-th record gets the seed (salt, k).
        files = tf.data.Dataset.zip(files, _random_salts(seed))

        def read(path, salt):
            return tf.data.TFRecordDataset(path).enumerate().map(
                lambda k, record: (record, tf.stack([salt, k]))
            )

        def parse(record, record_seed):
            return tfrecord.parse_example(record), record_seed
    else:
        read, parse = tf.data.TFRecordDataset, tfrecord.parse_example
    records = files.interleave(
        read,
        cycle_length=min(len(source.files), 8) if shuffle else 1,
        num_parallel_calls=AUTOTUNE if shuffle else None,
    )
    if shuffle:
        records = records.shuffle(shuffle_buffer, seed, reshuffle_each_iteration=True)
    return (
        records.map(parse, num_parallel_calls=AUTOTUNE), False, source.max_boxes,
        tf.data.experimental.AutoShardPolicy.FILE,
    )


def _read(element, images_are_paths):
    return tf.io.read_file(element["image"]) if images_are_paths else element["image"]


def _decode(element, images_are_paths):
    return records_lib.decode_image(_read(element, images_are_paths))


def _warn_of_cut_boxes(source, max_boxes, keep_difficult):
    """Logs how many boxes padding to ``max_boxes`` may cut (`_pad` keeps the first).

    Counted on the source's records (in memory) or from its most boxes on one
    image (TFRecords): the augmentation only removes boxes, so this bounds what
    is cut.
    """
    if isinstance(source, records_lib.Dataset):
        counts = np.array([
            len(r.classes) if keep_difficult else int(np.sum(~np.asarray(r.difficult, bool)))
            for r in source.records
        ])
        cut = int(np.sum(np.maximum(counts - max_boxes, 0)))
        if cut:
            logging.warning(
                "max_boxes=%d cuts up to %d boxes on %d of %d images (the most on one "
                "image: %d).", max_boxes, cut, int(np.sum(counts > max_boxes)),
                len(counts), int(counts.max()),
            )
    elif isinstance(source, tfrecord.TFRecordSource) and source.max_boxes > max_boxes:
        logging.warning(
            "max_boxes=%d cuts boxes on the images with more (the most on one image: %d).",
            max_boxes, source.max_boxes,
        )


def _pad(values, max_boxes, fill):
    """Pads (or cuts) the first axis of ``values`` to ``max_boxes``."""
    values = values[:max_boxes]
    padding = [[0, max_boxes - tf.shape(values)[0]]] + [[0, 0]] * (values.shape.rank - 1)
    padded = tf.pad(values, padding, constant_values=fill)
    padded.set_shape([max_boxes] + values.shape[1:].as_list())
    return padded


def _options(deterministic, shard_policy):
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = shard_policy
    # With tf.data's autotuner on, about half of SSD300's CPU training steps lost
    # their intra-op parallelism (6.8 s instead of 4.1 s, 1.2 of 2 cores busy; see
    # benchmarks/train_step.py). Parallel maps then use one call per core.
    options.autotune.enabled = False
    return options


def training_pipeline(
    source: Source,
    anchors: Optional[Anchors] = None,
    *,
    batch_size: int = 32,
    image_size: Optional[int] = None,
    targets: Optional[Targets] = None,
    augment: Optional[augment_lib.AugmentConfig] = augment_lib.AugmentConfig(),
    max_boxes: Optional[int] = None,
    keep_difficult: bool = False,
    seed: Optional[int] = None,
    deterministic: Optional[bool] = None,
    shuffle: bool = True,
    shuffle_buffer: int = 512,
    repeat: bool = False,
    drop_remainder: bool = True,
    decode: str = "full",
    photometric: str = "host",
) -> tf.data.Dataset:
    """The training input pipeline.

    Args:
        source: `Dataset`, `TFRecordSource`, or a TFRecord metadata path.
        anchors: the detector (`keras_scb.models.Detector`: its anchors), a preset
            name, an `AnchorSpec`, or an ``(A, 4)`` array with ``image_size``;
            sets the image size and the ``"ssd"`` targets.
        batch_size: images per batch.
        image_size: output side; needed only when ``anchors`` is an array or None
            (else it must agree with the anchors').
        targets: ``"ssd"``, ``"gt"`` or a callable (see the module docstring);
            default: the detector's ``targets`` when ``anchors`` is a detector,
            else ``"ssd"``.
        augment: `AugmentConfig`, or ``None`` to only resize.
        max_boxes: boxes per image after padding, for ``"gt"`` and callable
            targets (extra ones are cut); defaults to the source's most boxes on
            one image.
        keep_difficult: train on ``difficult`` / crowd boxes too.
        seed: makes the pipeline reproducible.
        deterministic: keep element order under parallel maps; defaults to
            ``seed is not None``.
        shuffle: shuffle the images (whole in-memory datasets; TFRecords by file
            and through a ``shuffle_buffer``-record buffer).
        repeat: repeat forever (for ``steps_per_epoch``).
        drop_remainder: drop the last partial batch (static batch shape).
        decode: ``"full"`` decodes every image whole (the reference);
            ``"window"`` decodes only the pixels the augmentation's window needs
            (`augment.augment_jpeg`; JPEGs only, other formats are decoded
            whole): the same boxes, the pixels equal up to rounding, less host time.
        photometric: ``"host"`` applies the photometric distortion here;
            ``"device"`` leaves it to the train step
            (`keras_scb.augment_on_device`): the images come out undistorted with
            each image's parameters next to them, drawn here from its seed.

    Returns:
        ``tf.data.Dataset`` of ``(images (B, S, S, 3) float32, targets)``; with
        ``photometric="device"`` of ``((images, params (B, 11) float32), targets)``
        (`augment.augment_pixels`' parameters).
    """
    if decode not in ("full", "window"):
        raise ValueError(f"decode must be 'full' or 'window'; got {decode!r}.")
    if photometric not in ("host", "device"):
        raise ValueError(f"photometric must be 'host' or 'device'; got {photometric!r}.")
    if photometric == "device" and (augment is None or not augment.photometric):
        raise ValueError("photometric='device' needs augment with photometric=True.")
    on_host = photometric == "host"
    if isinstance(source, str):
        source = tfrecord.read_tfrecords(source)
    size = _image_size(anchors, image_size)
    if targets is None:
        targets = getattr(anchors, "targets", "ssd")
    encode, per_image = _encoder(targets, anchors)
    deterministic = seed is not None if deterministic is None else deterministic
    elements, are_paths, source_max, shard_policy = _elements(
        source, True, shuffle, seed, shuffle_buffer
    )
    max_boxes = max_boxes or source_max
    if not per_image:
        _warn_of_cap(source, max_boxes, source_max)

    if not per_image:
        _warn_of_cut_boxes(source, max_boxes, keep_difficult)

    def augment_image(element, boxes, classes, image_seed):
        args = (boxes, classes, image_seed, size, augment, on_host)
        if decode == "full":
            return augment_lib.augment_pixels(_decode(element, are_paths), *args)
        data = _read(element, are_paths)
        return tf.cond(
            tf.io.is_jpeg(data),
            lambda: augment_lib.augment_jpeg(data, *args),
            lambda: augment_lib.augment_pixels(records_lib.decode_image(data), *args),
        )

    def prepare(element, image_seed):
        boxes, classes = element["boxes"], element["classes"]
        if not keep_difficult:
            boxes = tf.boolean_mask(boxes, ~element["difficult"])
            classes = tf.boolean_mask(classes, ~element["difficult"])
        if augment is None:
            image = _decode(element, are_paths)
            image = tf.image.resize(tf.cast(image, tf.float32), (size, size))
        else:
            image, boxes, classes, params = augment_image(element, boxes, classes, image_seed)
        image.set_shape([size, size, 3])
        if not on_host:
            image = (image, params)
        if per_image:
            return image, _encode_image(encode, boxes, classes)
        return image, (_pad(boxes, max_boxes, 0.0), _pad(classes, max_boxes, -1))

    data = elements.repeat() if repeat else elements
    data = data.map(prepare, num_parallel_calls=AUTOTUNE)
    data = data.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    if not per_image:
        data = data.map(
            lambda images, gt: (images, encode(*gt)), num_parallel_calls=AUTOTUNE
        )
    return data.prefetch(AUTOTUNE).with_options(_options(deterministic, shard_policy))


def _warn_of_cap(source, max_boxes, source_max):
    """Caps are never silent: counts the ground-truth boxes that padding to
    ``max_boxes`` drops (before augmentation, which only removes boxes)."""
    if max_boxes >= source_max:
        return
    if isinstance(source, records_lib.Dataset):
        over = [len(r.classes) - max_boxes for r in source.records if len(r.classes) > max_boxes]
        counted = f"{sum(over)} boxes of {len(over)} images are dropped"
    else:
        counted = "boxes of the images with more are dropped"
    logging.warning(
        "max_boxes=%d but an image of the training split has %d boxes: %s (a padded target "
        "keeps the first max_boxes); raise --max_boxes (0: the split's most) to keep them.",
        max_boxes, source_max, counted,
    )


def validation_pipeline(
    source: Source,
    anchors: Optional[Anchors] = None,
    *,
    batch_size: int = 32,
    image_size: Optional[int] = None,
    targets: Optional[Targets] = None,
    max_boxes: Optional[int] = None,
) -> tf.data.Dataset:
    """The evaluation pipeline: every image once, in source order, resized only.

    Args:
        source, anchors, batch_size, image_size, max_boxes: as in
            `training_pipeline` (the last batch may be smaller).
        targets: ``None``, or as in `training_pipeline` to add ``info["targets"]``
            (computed without the ``difficult`` boxes, as in training). For
            ``validation_data`` in ``model.fit`` map to ``(images, info["targets"])``.

    Returns:
        ``tf.data.Dataset`` of ``(images (B, S, S, 3) float32, info)``, ``info`` a
        dict: ``image_id`` int64 ``(B,)``; ``height``, ``width`` int32 ``(B,)``, the
        original size; ``boxes`` float32 ``(B, G, 4)`` relative corners of the
        original image, ``classes`` int32 ``(B, G)`` (-1 on padding),
        ``difficult`` bool ``(B, G)``, ``areas`` float64 ``(B, G)`` (`Record.areas`).
    """
    size = _image_size(anchors, image_size)
    encode, per_image = (None, False) if targets is None else _encoder(targets, anchors)
    elements, are_paths, source_max, shard_policy = _elements(source, False)
    max_boxes = max_boxes or source_max

    def prepare(element):
        image = tf.image.resize(tf.cast(_decode(element, are_paths), tf.float32), (size, size))
        info = {key: element[key] for key in ("image_id", "height", "width")}
        info["boxes"] = _pad(element["boxes"], max_boxes, 0.0)
        info["classes"] = _pad(element["classes"], max_boxes, -1)
        info["difficult"] = _pad(element["difficult"], max_boxes, False)
        info["areas"] = _pad(element["areas"], max_boxes, 0.0)
        if per_image:
            classes = tf.where(element["difficult"], -1, element["classes"])
            info["targets"] = _encode_image(encode, element["boxes"], classes)
        return image, info

    def add_targets(images, info):
        classes = tf.where(info["difficult"], -1, info["classes"])
        return images, {**info, "targets": encode(info["boxes"], classes)}

    data = elements.map(prepare, num_parallel_calls=AUTOTUNE)
    data = data.batch(batch_size, num_parallel_calls=AUTOTUNE)
    if encode is not None and not per_image:
        data = data.map(add_targets, num_parallel_calls=AUTOTUNE)
    return data.prefetch(AUTOTUNE).with_options(_options(True, shard_policy))

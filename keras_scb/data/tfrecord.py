"""Sharded TFRecord storage of a `Dataset`, and its reader.

``write_tfrecords(dataset, prefix)`` writes ``<prefix>-00000-of-000NN.tfrecord``
shards (consecutive records, so a sequential read keeps the dataset order) and
``<prefix>.json`` with the label space and counts. One ``tf.train.Example`` per
image:

    image/encoded   bytes    the image file as is (JPEG, PNG, ...)
    image/id        int64    `Record.image_id`
    image/name      bytes    `Record.name`
    image/height, image/width   int64
    image/object/bbox       float list, N*4 relative [xmin, ymin, xmax, ymax]
    image/object/class      int64 list, N class ids
    image/object/difficult  int64 list, N flags
    image/object/area       bytes    N little-endian float64 `Record.areas` (a
                            float list would round COCO's areas to float32)
"""

import dataclasses
import json
import math
import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_scb.data import records as records_lib
from keras_scb.fileio import (
    OutputError,
    abbreviate,
    read_json,
    remove_stale_temporaries,
    short_repr,
    temporary_name,
    write_json,
)

RECORDS_PER_SHARD = 1024

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.int64),
    "image/name": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/object/bbox": tf.io.VarLenFeature(tf.float32),
    "image/object/class": tf.io.VarLenFeature(tf.int64),
    "image/object/difficult": tf.io.VarLenFeature(tf.int64),
    # Absent from shards written before areas were stored: parse_example says so.
    "image/object/area": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


@dataclasses.dataclass(frozen=True)
class TFRecordSource:
    """A written dataset, as the input pipeline takes it.

    Attributes:
        files: shard paths, in order.
        class_names, category_ids: as in `Dataset`.
        num_records: images in all shards.
        max_boxes: the most boxes on one image.
    """

    files: Tuple[str, ...]
    class_names: Tuple[str, ...]
    category_ids: Optional[Tuple[int, ...]]
    num_records: int
    max_boxes: int


def _example(record, encoded):
    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def strings(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    feature = {
        "image/encoded": strings(encoded),
        "image/id": ints([record.image_id]),
        "image/name": strings(record.name.encode()),
        "image/height": ints([record.height]),
        "image/width": ints([record.width]),
        "image/object/bbox": tf.train.Feature(
            float_list=tf.train.FloatList(value=record.boxes.reshape(-1).tolist())
        ),
        "image/object/class": ints(record.classes.tolist()),
        "image/object/difficult": ints(record.difficult.astype(int).tolist()),
        "image/object/area": strings(record.areas.astype("<f8").tobytes()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _encoded(record):
    if isinstance(record.image, bytes):
        return record.image
    with open(record.image, "rb") as f:
        return f.read()


def _shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{os.path.basename(prefix)}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def _check_replaceable(prefix: str, overwrite: bool) -> list:
    """The files of an earlier conversion to ``prefix`` that a new one replaces.

    Raises:
        FileExistsError: there are some and not ``overwrite``.
        OutputError: a shard of the prefix that its metadata does not list (not
            written with it: ``overwrite`` never deletes it).
    """
    folder = os.path.dirname(os.path.abspath(prefix))
    meta_path = f"{prefix}.json"
    base = os.path.basename(prefix)
    shards = sorted(
        name for name in (os.listdir(folder) if os.path.isdir(folder) else ())
        if name.startswith(f"{base}-") and "-of-" in name and name.endswith(".tfrecord")
    )
    if not shards and not os.path.exists(meta_path):
        return []
    if not overwrite:
        raise FileExistsError(
            f"{prefix}: an earlier conversion is there ({meta_path}, {len(shards)} shards); "
            "pass --overwrite to replace it."
        )
    listed = []
    if os.path.exists(meta_path):
        meta = read_json(meta_path, "TFRecord metadata")
        files = meta.get("files") if isinstance(meta, dict) else None
        listed = [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
    foreign = [name for name in shards if name not in listed]
    if foreign:
        raise OutputError(
            f"{prefix}: shards {abbreviate(foreign)} are not listed in {meta_path}; "
            "--overwrite never deletes files it did not write: move them away."
        )
    return [os.path.join(folder, name) for name in shards]


def write_tfrecords(
    dataset: records_lib.Dataset,
    prefix: str,
    num_shards: Optional[int] = None,
    progress: bool = True,
    overwrite: bool = False,
) -> str:
    """Writes the shards and the metadata file, as a whole or not at all.

    Every shard is written to a temporary file first (`keras_scb.fileio`); only
    when all are complete does the old metadata go, the shards take their names,
    the old shards that are not replaced go, and the metadata is written last.
    An interrupted conversion thus leaves the earlier one whole, or (killed in
    the renames) no metadata, which readers refuse: never new shards beside old
    metadata.

    Args:
        dataset: `Dataset` (images as paths or bytes).
        prefix: output path without extension; its folder is created.
        num_shards: number of files; ``None`` gives one per `RECORDS_PER_SHARD`
            images. For file-sharded multi-worker training use at least one per
            worker.
        progress: show a progress bar.
        overwrite: replace an earlier conversion to ``prefix`` (only the files
            its metadata lists).

    Returns:
        The metadata path ``<prefix>.json`` (what `read_tfrecords` takes).
    """
    import keras

    if not dataset.records:
        raise ValueError(f"{prefix}: refusing to write an empty dataset.")
    num_shards = num_shards or math.ceil(len(dataset) / RECORDS_PER_SHARD)
    num_shards = min(num_shards, len(dataset))
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    old = _check_replaceable(prefix, overwrite)
    bar = keras.utils.Progbar(len(dataset), unit_name="image") if progress else None
    files = [_shard_name(prefix, shard, num_shards) for shard in range(num_shards)]
    temporaries = [temporary_name(os.path.join(folder, name)) for name in files]
    meta_path = f"{prefix}.json"
    try:
        for shard, temporary in enumerate(temporaries):
            start = shard * len(dataset) // num_shards
            stop = (shard + 1) * len(dataset) // num_shards
            with tf.io.TFRecordWriter(temporary) as writer:
                for record in dataset.records[start:stop]:
                    writer.write(_example(record, _encoded(record)).SerializeToString())
                    if bar is not None:
                        bar.add(1)
        if os.path.exists(meta_path):
            os.remove(meta_path)  # from here to the new metadata, no conversion is whole
        for temporary, name in zip(temporaries, files):
            os.replace(temporary, os.path.join(folder, name))
    except BaseException:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)
        raise
    for path in old:
        if os.path.basename(path) not in files:
            os.remove(path)
    meta = {
        "files": files,
        "class_names": list(dataset.class_names),
        "category_ids": None if dataset.category_ids is None else list(dataset.category_ids),
        "num_records": len(dataset),
        "num_boxes": dataset.num_boxes(),
        "max_boxes": dataset.max_boxes(),
        "issues": dataset.issues,
    }
    write_json(meta, meta_path, indent=1)
    return meta_path


def _feature(example, key):
    feature = example.features.feature[key]
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def _check_record(serialized, num_classes):
    """Why a serialized example cannot be trained on, or ``None``."""
    try:
        example = tf.train.Example.FromString(serialized)
        (encoded,) = _feature(example, "image/encoded")
        (height,), (width,) = _feature(example, "image/height"), _feature(example, "image/width")
        boxes = np.asarray(_feature(example, "image/object/bbox"), np.float64)
        classes = np.asarray(_feature(example, "image/object/class"), np.int64)
    except (ValueError, TypeError) as error:  # protobuf DecodeError is a ValueError
        return f"malformed example: {error}"
    if not np.isfinite(boxes).all() or len(boxes) != 4 * len(classes):
        return f"{len(boxes)} box values (non-finite, or not 4 per class id)"
    if ((classes < 0) | (classes >= num_classes)).any():
        return f"class ids {sorted(set(classes.tolist()))} outside 0..{num_classes - 1}"
    problem = records_lib.check_image(encoded, height, width)
    return None if problem is None else ": ".join(problem)


def verify_shards(source: TFRecordSource) -> None:
    """Reads every record of every shard: framing (CRC), example fields, image.

    Costs about one image check per record (as `read_voc` with
    ``verify_images``); a damaged shard otherwise stops training mid-epoch with
    an error that names no file.

    Raises:
        BadInputError: naming the shard file, and the record and image in it.
    """
    total = 0
    for path in source.files:
        index = 0
        try:
            for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
                problem = _check_record(serialized, len(source.class_names))
                if problem:
                    raise records_lib.BadInputError(
                        f"{path}: record {index}: {problem}; rewrite the shards with "
                        "python -m keras_scb.data.convert"
                    )
                index += 1
        except tf.errors.OpError as error:
            raise records_lib.BadInputError(
                f"{path}: truncated or corrupt shard after {index} records "
                f"({records_lib.op_error(error)}); rewrite the shards with "
                "python -m keras_scb.data.convert"
            ) from None
        total += index
    if total != source.num_records:
        raise records_lib.BadInputError(
            f"{source.files[0]} ...: the shards hold {total} records, the metadata "
            f"says {source.num_records}"
        )


def _whole(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _metadata_problem(meta) -> Optional[str]:
    """Why a metadata dict cannot be read (each field's type and range), or None."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    files, names, ids = meta.get("files"), meta.get("class_names"), meta.get("category_ids")
    if not isinstance(files, list) or not files or not all(
        isinstance(f, str) and f and os.path.basename(f) == f and f not in (".", "..")
        for f in files
    ):
        return (f"field 'files' is {short_repr(files)}, not a list of shard file names "
                "in its folder")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return f"field 'class_names' is {short_repr(names)}, not a list of names"
    if ids is not None and not (isinstance(ids, list) and len(ids) == len(names)
                                and all(_whole(i, 0) for i in ids)):
        return (f"field 'category_ids' is {short_repr(ids)}, not one whole number >= 0 "
                "per class")
    for field in ("num_records", "max_boxes"):
        if not _whole(meta.get(field), 1):
            return f"field {field!r} is {meta.get(field)!r}, not a whole number >= 1"
    return None


def read_tfrecords(path: str, verify: bool = True) -> TFRecordSource:
    """Opens what `write_tfrecords` wrote, given ``<prefix>.json`` or ``<prefix>``.

    Args:
        path: the metadata file or its prefix.
        verify: read every record once (`verify_shards`), so that a damaged shard
            is an error naming it now rather than a nameless one mid-training.
    """
    meta_path = path if path.endswith(".json") else f"{path}.json"
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as error:
        raise records_lib.BadInputError(f"{meta_path}: malformed JSON: {error}") from None
    problem = _metadata_problem(meta)
    if problem:
        raise records_lib.BadInputError(f"{meta_path}: malformed TFRecord metadata: {problem}")
    folder = os.path.dirname(os.path.abspath(meta_path))
    files = tuple(os.path.join(folder, name) for name in meta["files"])
    category_ids = meta.get("category_ids")
    source = TFRecordSource(
        files=files,
        class_names=tuple(meta["class_names"]),
        category_ids=None if category_ids is None else tuple(category_ids),
        num_records=meta["num_records"],
        max_boxes=meta["max_boxes"],
    )
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{meta_path}: shard files missing: {missing}")
    if verify:
        verify_shards(source)
    return source


def parse_example(serialized):
    """One serialized example -> the element dict of the input pipeline.

    Returns:
        dict: ``image`` (encoded image string), ``image_id`` int64, ``height``,
        ``width`` int32, ``boxes`` float32 ``(N, 4)``, ``classes`` int32 ``(N,)``,
        ``difficult`` bool ``(N,)``, ``areas`` float64 ``(N,)``.
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    classes = tf.cast(tf.sparse.to_dense(parsed["image/object/class"]), tf.int32)
    areas = tf.io.decode_raw(parsed["image/object/area"], tf.float64, little_endian=True)
    check = tf.debugging.assert_equal(
        tf.size(areas), tf.size(classes),
        message="TFRecord example without object areas (written by an older "
        "version); rewrite it with python -m keras_scb.data.convert",
    )
    with tf.control_dependencies([check]):
        areas = tf.identity(areas)
    return {
        "image": parsed["image/encoded"],
        "image_id": parsed["image/id"],
        "height": tf.cast(parsed["image/height"], tf.int32),
        "width": tf.cast(parsed["image/width"], tf.int32),
        "boxes": tf.reshape(tf.sparse.to_dense(parsed["image/object/bbox"]), [-1, 4]),
        "classes": classes,
        "difficult": tf.sparse.to_dense(parsed["image/object/difficult"]) > 0,
        "areas": areas,
    }

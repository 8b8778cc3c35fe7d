"""Converts a VOC-style or COCO dataset to sharded TFRecords.

    python -m keras_scb.data.convert --format=voc --data_dir=data/bccd \\
        --splits=train --class_names=RBC,WBC,Platelets --output=out/bccd-train
    python -m keras_scb.data.convert --format=coco \\
        --coco_annotations=instances_val2017.json --coco_images=val2017 \\
        --output=out/coco-val2017 --num_shards=8

Writes ``<output>-NNNNN-of-NNNNN.tfrecord`` and ``<output>.json``; give the latter
to the input pipelines.
"""

from absl import app, flags, logging

from keras_scb import cli
from keras_scb import flags as common_flags
from keras_scb.data import coco, records, tfrecord, voc
from keras_scb.fileio import check_not_input

FLAGS = flags.FLAGS


def _define_flags():
    # Defined only when run as a program, so importing this module next to
    # other tools never clashes over flag names.
    flags.DEFINE_enum("format", None, ["voc", "coco"], "Source layout.")
    flags.DEFINE_list("data_dir", [], "--format=voc: VOC-style roots (e.g. VOC2007,VOC2012), "
                      "joined in order (as keras_scb.train's --data_dir).")
    cli.define_renamed("voc_roots", "data_dir")
    flags.DEFINE_list("splits", ["trainval"], "VOC split names under ImageSets/Main.")
    flags.DEFINE_list(
        "class_names", [],
        "VOC class names in id order; empty: <root>/labels.txt if present, else the sorted "
        "names in every annotation file of the roots (all splits, so every split agrees).",
    )
    flags.DEFINE_string("coco_annotations", None, "COCO instances JSON.")
    flags.DEFINE_string("coco_images", None, "Folder of the COCO images.")
    flags.DEFINE_enum("crowd", "ignore", list(coco.CROWD_POLICIES), "COCO iscrowd boxes.")
    flags.DEFINE_string("output", None, "Output path prefix (no extension).")
    flags.DEFINE_integer(
        "num_shards", None,
        f"Number of shard files; default one per {tfrecord.RECORDS_PER_SHARD} images.",
    )
    flags.DEFINE_enum("bad_files", "raise", list(records.POLICIES), "Unusable image or annotation files.")
    flags.DEFINE_enum("bad_objects", "raise", list(records.POLICIES), "Unusable boxes.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_bool("overwrite", False, "Replace an earlier conversion to --output (the "
                      "shards its metadata lists, and the metadata).")
    flags.mark_flags_as_required(["format", "output"])
    common_flags.at_least("num_shards", 1)


def read_source() -> records.Dataset:
    """The `Dataset` that the flags describe."""
    policies = {"bad_files": FLAGS.bad_files, "bad_objects": FLAGS.bad_objects}
    if FLAGS.format == "voc":
        if not FLAGS.data_dir:
            raise app.UsageError("--format=voc needs --data_dir.")
        return voc.read_voc(
            FLAGS.data_dir, FLAGS.splits, FLAGS.class_names or None, **policies
        )
    if not (FLAGS.coco_annotations and FLAGS.coco_images):
        raise app.UsageError("--format=coco needs --coco_annotations and --coco_images.")
    return coco.read_coco(
        FLAGS.coco_annotations, FLAGS.coco_images, crowd=FLAGS.crowd, **policies
    )


def main(argv: list) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # The one output rule: no shard or metadata over, around or inside an input.
    for output in (f"{FLAGS.output}.json", f"{FLAGS.output}-00000-of-00001.tfrecord"):
        check_not_input(output, [*FLAGS.voc_roots, FLAGS.coco_annotations, FLAGS.coco_images])
    dataset = read_source()
    logging.info(
        "%d images, %d boxes, classes %s, issues %s",
        len(dataset), dataset.num_boxes(), dataset.class_names, dataset.issues,
    )
    meta = tfrecord.write_tfrecords(
        dataset, FLAGS.output, FLAGS.num_shards, FLAGS.progress, FLAGS.overwrite
    )
    print(f"Wrote {len(dataset)} images to {meta}; {records.format_issues(dataset.issues)}")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

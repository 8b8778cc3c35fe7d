"""Datasets, augmentation and input pipelines.

Every source yields a `Dataset` of `Record` (see `keras_scb.data.records` for the
box conventions); `training_pipeline` / `validation_pipeline` turn a `Dataset` or
TFRecords into batches for ``model.fit``.
"""

from keras_scb.data.augment import AugmentConfig
from keras_scb.data.coco import read_coco, to_coco_json, write_coco
from keras_scb.data.pipeline import (
    padded_gt_targets,
    ssd_targets,
    training_pipeline,
    validation_pipeline,
)
from keras_scb.data.records import BadInputError, Dataset, Record
from keras_scb.data.synthetic import make_synthetic
from keras_scb.data.tfrecord import TFRecordSource, read_tfrecords, write_tfrecords
from keras_scb.data.vendored import (
    BCCD_CLASSES,
    bccd_root,
    coco_subset_root,
    load_bccd,
    load_coco_subset,
)
from keras_scb.data.voc import VOC_CLASSES, read_voc

"""Export a detector checkpoint as a TensorFlow SavedModel in the TF Object Detection API's contract.

    python -m exporters.saved_model --checkpoint model_dir/best.keras --output export/saved_model

Signatures (input images of any ``H x W``, the same within a batch, resized
bilinearly to the model's ``S x S`` in the graph without keeping the aspect ratio,
as in training; relative boxes therefore apply to the original image):

- ``serving_default``: the TF OD API's exporter contract (``exporter_lib_v2``'s
  ``image_tensor`` input, batch 1 or ``N``): ``input_tensor`` uint8
  ``(B, H, W, 3)`` -> float32 `OD_API_KEYS`, ``detection_classes`` **1-based** as
  the OD API numbers them (``label_map.pbtxt``), see `od_api_outputs`;
- ``detect_zero_based``: ``images`` uint8 ``(B, H, W, 3)`` -> the four
  `exporters.common.DETECTION_KEYS`, class ids ``0..C-1`` (``labels.txt``, the
  TFLite files' numbering; what `exporters.runtime` serves);
- ``raw``: ``images`` float32 ``(B, S, S, 3)`` in ``[0, 255]`` -> ``raw_predictions``
  float32 ``(B, A, 4 + C + 1)``, the network output before decoding (anchor
  order and offsets as in `keras_scb.matching`; anchors in ``keras_scb_export.json``).

An input of another dtype is refused by the signature itself ("expected to be a
uint8 tensor"); one of another rank or channel count by a shape check first in
the graph (`checked_images`: "... is not compatible with expected shape
[?,?,?,3]"). There is no float32 signature: the OD API's ``image_tensor`` export
has none either, and a float input would invite images scaled to ``[0, 1]``,
which give wrong detections without an error; cast ``[0, 255]`` floats with
``tf.cast(tf.round(x), tf.uint8)``.

The folder also holds ``keras_scb_export.json`` (image size, classes, anchor
spec, decoder settings) and, when class names are known, ``labels.txt`` and
``label_map.pbtxt`` (the OD API's ``StringIntLabelMap``, ids from 1).
"""

import os

from absl import flags

from exporters import common
from keras_scb import cli
from keras_scb.fileio import files_under

# The outputs of the OD API's SSD exporter (``SSDMetaArch.postprocess``), all float32.
OD_API_KEYS = (
    *common.DETECTION_KEYS,
    "detection_anchor_indices",
    "detection_multiclass_scores",
    "raw_detection_boxes",
    "raw_detection_scores",
)
SIGNATURES = ("serving_default", "detect_zero_based", "raw")
LABEL_MAP_FILE = "label_map.pbtxt"
# The top-level entries of a folder `export_saved_model` writes (TensorFlow's
# and ours): what ``--overwrite`` may replace.
SAVED_MODEL_ENTRIES = ("saved_model.pb", "fingerprint.pb", "variables", "assets",
                       common.METADATA_FILE, common.LABELS_FILE, LABEL_MAP_FILE)
# The OD API numbers foreground classes from 1 (``label_id_offset``); 0 is background.
OD_API_LABEL_OFFSET = 1


def od_api_outputs(outputs):
    """Export outputs with the extra fields (`exporters.common.export_outputs`)
    -> the OD API's: the same tensors, ``detection_classes`` + 1 on valid rows
    (padding rows stay 0, below every OD API id).

    The other ids keep their meaning: ``detection_multiclass_scores`` and
    ``raw_detection_scores`` have the background at column 0, so column ``k`` is
    OD API class ``k``.
    """
    import tensorflow as tf

    k = outputs["detection_classes"].shape[-1]
    valid = tf.range(k, dtype=tf.float32) < outputs["num_detections"][:, None]
    classes = tf.where(valid, outputs["detection_classes"] + OD_API_LABEL_OFFSET, 0.0)
    return {**outputs, "detection_classes": classes}


def checked_images(images):
    """``images`` with their shape checked at run time: a loaded signature checks
    only the dtype, and a wrong rank or channel count would otherwise fail deep
    in the network with an unrelated message."""
    import tensorflow as tf

    return tf.ensure_shape(images, (None, None, None, 3), name="check_rgb_images_bhwc")


def label_map_text(class_names):
    """``class_names`` as the OD API's ``StringIntLabelMap`` text (``label_map.pbtxt``), ids from 1."""

    def quoted(name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return "".join(
        f"item {{\n  id: {i + OD_API_LABEL_OFFSET}\n  name: {quoted(name)}\n"
        f"  display_name: {quoted(name)}\n}}\n"
        for i, name in enumerate(class_names)
    )


def build_archive(detector, **decoder_kwargs):
    """`keras.export.ExportArchive` of ``detector`` with the signatures above."""
    import keras
    import tensorflow as tf

    size = detector.image_size
    any_image = (None, None, None, 3)
    detect = common.serving_function(detector, resize=True, extra_outputs=True, **decoder_kwargs)
    archive = keras.export.ExportArchive()
    archive.track(detector)
    archive.add_endpoint(
        "serving_default",
        lambda input_tensor: od_api_outputs(detect(checked_images(input_tensor))),
        input_signature=[tf.TensorSpec(any_image, tf.uint8, name="input_tensor")],
    )
    detect_zero_based = common.serving_function(detector, resize=True, **decoder_kwargs)
    archive.add_endpoint(
        "detect_zero_based",
        lambda images: detect_zero_based(checked_images(images)),
        input_signature=[tf.TensorSpec(any_image, tf.uint8, name="images")],
    )
    archive.add_endpoint(
        "raw",
        lambda images: {"raw_predictions": detector(images, training=False)},
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="images")],
    )
    return archive


def foreign_files(folder):
    """The files of an existing ``folder`` that `export_saved_model` did not write:
    every one if it is no SavedModel, else those outside a SavedModel's entries."""
    names = files_under(folder)
    if not os.path.isfile(os.path.join(folder, "saved_model.pb")):
        return names
    return [name for name in names if name.split(os.sep)[0] not in SAVED_MODEL_ENTRIES]


def export_saved_model(detector, output_dir, class_names=None, overwrite=False, **decoder_kwargs):
    """Writes the SavedModel folder ``output_dir`` atomically.

    Args:
        detector: a `keras_scb.models.Detector`.
        output_dir: the folder to create (must not exist unless ``overwrite``).
        class_names: ``C`` names, written to ``labels.txt`` and ``label_map.pbtxt``; optional.
        **decoder_kwargs: `keras_scb.postprocess.PostProcessor` options.

    Returns:
        ``output_dir``.
    """
    class_names = common.export_class_names(detector, class_names)
    common.prepare_output(output_dir, overwrite, directory=True, foreign=foreign_files)
    archive = build_archive(detector, **decoder_kwargs)
    with common.atomic_output(output_dir, overwrite, directory=True,
                              foreign=foreign_files) as temporary:
        archive.write_out(temporary, verbose=False)
        metadata = common.export_metadata(
            detector, class_names, decoder_kwargs, signatures=list(SIGNATURES),
            od_api_outputs=list(OD_API_KEYS),
        )
        common.write_json(metadata, os.path.join(temporary, common.METADATA_FILE))
        if class_names:
            common.write_labels(class_names, os.path.join(temporary, common.LABELS_FILE))
            common.write_text(label_map_text(class_names), os.path.join(temporary, LABEL_MAP_FILE))
    return output_dir


def _define_flags():
    common.define_export_flags("The SavedModel folder to write.")


def main(argv):
    del argv
    values = flags.FLAGS
    common.prepare_output(values.output, values.overwrite, [values.checkpoint], directory=True,
                          foreign=foreign_files)  # fail before the conversion
    detector = common.load_detector(values.checkpoint)
    class_names = common.read_class_names(values.checkpoint, values.class_names)
    export_saved_model(
        detector, values.output, class_names=class_names, overwrite=values.overwrite,
        **common.decoder_kwargs_from_flags(values),
    )
    print(f"SavedModel written to {values.output} (signatures: {', '.join(SIGNATURES)}).")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

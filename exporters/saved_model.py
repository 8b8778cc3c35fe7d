"""Export a detector checkpoint as a TensorFlow SavedModel.

    python -m exporters.saved_model --checkpoint model_dir/best.keras --output export/saved_model

Signatures (see `exporters.common` for the outputs):

- ``serving_default``: ``images`` uint8 ``(B, S, S, 3)`` -> detections;
- ``serving_any_size``: ``images`` uint8 ``(B, H, W, 3)``, any ``H, W`` (the same
  within a batch), resized bilinearly to ``S x S`` in the graph -> detections;
- ``raw``: ``images`` float32 ``(B, S, S, 3)`` in ``[0, 255]`` -> ``raw_predictions``
  float32 ``(B, A, 4 + C + 1)``, the network output before decoding (anchor
  order and offsets as in `keras_scb.matching`; anchors in ``keras_scb_export.json``).

The folder also holds ``keras_scb_export.json`` (image size, classes, anchor
spec, decoder settings) and ``labels.txt`` when class names are known.
"""

import os

from absl import flags

from exporters import common
from keras_scb import cli


def build_archive(detector, any_size=True, **decoder_kwargs):
    """`keras.export.ExportArchive` of ``detector`` with the signatures above."""
    import keras
    import tensorflow as tf

    size = detector.image_size
    archive = keras.export.ExportArchive()
    archive.track(detector)
    archive.add_endpoint(
        "serving_default",
        common.serving_function(detector, **decoder_kwargs),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name="images")],
    )
    if any_size:
        archive.add_endpoint(
            "serving_any_size",
            common.serving_function(detector, resize=True, **decoder_kwargs),
            input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")],
        )
    archive.add_endpoint(
        "raw",
        lambda images: {"raw_predictions": detector(images, training=False)},
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="images")],
    )
    return archive


def export_saved_model(
    detector, output_dir, class_names=None, any_size=True, overwrite=False, **decoder_kwargs
):
    """Writes the SavedModel folder ``output_dir`` atomically.

    Args:
        detector: a `keras_scb.models.Detector`.
        output_dir: the folder to create (must not exist unless ``overwrite``).
        class_names: ``C`` names, written to ``labels.txt``; optional.
        any_size: add the ``serving_any_size`` signature.
        **decoder_kwargs: `keras_scb.postprocess.PostProcessor` options.

    Returns:
        ``output_dir``.
    """
    class_names = common.export_class_names(detector, class_names)
    common.prepare_output(output_dir, overwrite)
    archive = build_archive(detector, any_size=any_size, **decoder_kwargs)
    with common.atomic_output(output_dir, overwrite, directory=True) as temporary:
        archive.write_out(temporary, verbose=False)
        metadata = common.export_metadata(
            detector, class_names, decoder_kwargs,
            signatures=["serving_default", *(["serving_any_size"] if any_size else []), "raw"],
        )
        common.write_json(metadata, os.path.join(temporary, common.METADATA_FILE))
        if class_names:
            common.write_labels(class_names, os.path.join(temporary, common.LABELS_FILE))
    return output_dir


def _define_flags():
    flags.DEFINE_string("checkpoint", None, "A .keras checkpoint of a Detector.")
    flags.DEFINE_string("output", None, "The SavedModel folder to write.")
    flags.DEFINE_string(
        "class_names", None,
        "Comma-separated class names (default: labels.txt next to the checkpoint).",
    )
    flags.DEFINE_bool("any_size", True, "Add the serving_any_size signature.")
    flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
    common.define_decoder_flags()
    flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
    del argv
    values = flags.FLAGS
    common.prepare_output(values.output, values.overwrite)  # fail before the conversion
    detector = common.load_detector(values.checkpoint)
    class_names = common.read_class_names(values.checkpoint, values.class_names)
    export_saved_model(
        detector, values.output, class_names=class_names, any_size=values.any_size,
        overwrite=values.overwrite, **common.decoder_kwargs_from_flags(values),
    )
    print(f"SavedModel written to {values.output} (signatures: serving_default"
          f"{', serving_any_size' if values.any_size else ''}, raw).")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

"""Converts a reference SSD300 checkpoint into a ``.keras`` detector, exactly.

    python -m keras_scb.convert_weights --source=torchvision \\
        --input=ssd300_vgg16_coco-b556d3b4.pth --output=ssd300_coco_torchvision.keras
    python -m keras_scb.convert_weights --source=ssd.pytorch \\
        --input=ssd300_mAP_77.43_v2.pth --output=ssd300_voc_ssdpytorch.keras

``--input`` is a PyTorch state dict (``.pth``, read with ``weights_only=True``;
needs the optional extra ``pip install -e '.[torch]'``) or an ``.npz`` of the
same names. Every tensor's name and shape is checked against the source's
layout (`keras_scb.models.reference_weights`) before anything is built or
written: a missing, unexpected or mis-shaped tensor stops the command with one
line naming it. The ``ssd300`` written has the source's input normalisation,
anchors (torchvision: ``ssd300_torchvision``; ssd.pytorch: ``ssd300`` for 20
classes, ``ssd300_coco`` otherwise), class count (from the class conv) and
label map: ``--class_names``, else torchvision's 90 COCO slots (its "N/A"
placeholders included, numbered), VOC's 20 or COCO's 80. ``evaluate``, the
exporters and ``train --init_checkpoint`` take the file as any checkpoint.
"""

import os
from typing import TYPE_CHECKING, Sequence

from absl import flags

from keras_scb import cli

if TYPE_CHECKING:
    from keras_scb.models import Detector

SOURCE_NAMES = ("torchvision", "ssd.pytorch")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command's flags (defined when it runs, so that importing `convert`
    next to another command's flags defines no flag twice)."""
    flags.DEFINE_enum("source", None, list(SOURCE_NAMES), "The implementation that wrote --input.")
    flags.DEFINE_string("input", None, "The reference state dict: .pth, or .npz of the same names.")
    flags.DEFINE_string("output", None, "The .keras file to write (atomically).")
    flags.DEFINE_list("class_names", [], "The label map, class names in id order; default: the "
                      "source's for its class count (torchvision 90 COCO slots, VOC 20, COCO 80).")


def default_class_names(source: str, num_classes: int) -> tuple[str, ...] | None:
    """The label map a ``source`` checkpoint of ``num_classes`` classes was trained
    with, or None when no reference checkpoint has that many."""
    from keras_scb.data.voc import VOC_CLASSES
    from keras_scb.models import reference_weights

    known = [reference_weights.COCO_NAMES]
    known.append(
        reference_weights.TORCHVISION_COCO_NAMES if source == "torchvision" else VOC_CLASSES
    )
    return next((tuple(names) for names in known if len(names) == num_classes), None)


def convert(
    source: str,
    input_path: str,
    output_path: str,
    class_names: Sequence[str] | None = None,
) -> "Detector":
    """Reads, checks and converts ``input_path``; writes ``output_path`` (atomically).

    Returns:
        The written `keras_scb.models.Detector`.

    Raises:
        ValueError: naming the flag, the file or the tensor; nothing is written.
    """
    from keras_scb.checkpoints import check_finite
    from keras_scb.fileio import atomic_output
    from keras_scb.models import build_detector, reference_weights

    if not output_path.endswith(".keras"):
        raise ValueError(f"--output={output_path} must end in .keras.")
    if os.path.abspath(output_path) == os.path.abspath(input_path):
        raise ValueError(f"--output={output_path} is --input; choose another file.")
    reference = reference_weights.SOURCES[source]
    what = f"--input={input_path} ({source}'s SSD300 layout)"
    state = reference_weights.read_state_dict(input_path)
    num_classes = reference_weights.reference_num_classes(reference, state, what)
    names = tuple(class_names) if class_names else default_class_names(source, num_classes)
    if names is None or len(names) != num_classes:
        raise ValueError(
            f"--class_names: {what} has {num_classes} classes; pass their "
            f"{num_classes} names in id order (got {len(names or ())})."
        )
    detector = build_detector(
        "ssd300", num_classes, class_names=names,
        anchors=reference.anchors(num_classes), normalization=reference.normalization,
    )
    reference_weights.load_reference_weights(detector, reference, state, what)
    check_finite(detector, what)
    with atomic_output(output_path) as temporary:
        detector.save(temporary)
    return detector


def main(argv: list[str]) -> None:
    del argv
    for name in ("source", "input", "output"):
        if not getattr(FLAGS, name):
            raise ValueError(f"--{name} is required.")
    from keras_scb.models.reference_weights import SOURCES

    detector = convert(FLAGS.source, FLAGS.input, FLAGS.output, FLAGS.class_names)
    reference = SOURCES[FLAGS.source]
    print(
        f"Wrote {FLAGS.output}: ssd300 of {detector.num_classes} classes, anchors "
        f"{reference.anchors(detector.num_classes)}, input normalisation "
        f"{reference.normalization}, {detector.count_params():,} parameters from "
        f"{FLAGS.input}."
    )


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

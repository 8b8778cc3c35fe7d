"""Detect objects in images and draw them: boxes labelled with class and score.

    python -m exporters.predict --checkpoint export/model.tflite --images photos/ --output_dir out/
    python -m exporters.predict --checkpoint model_dir/best.keras --images a.jpg,b.png --score_threshold 0.3

``--checkpoint`` (formerly ``--model_path``, still accepted) is a ``.tflite`` or ``.onnx`` file or a SavedModel folder (from `exporters`) or a
``.keras`` checkpoint. Each image (any size; resized to the model's input as in
training, the boxes map back to the original) gives a drawing
``<output_dir>/<path>.png``, where ``<path>`` is the image's path relative to
the folder that holds all the inputs, extension included (``photos/cell.jpg``
-> ``cell.jpg.png``; ``a/cell.jpg`` and ``b/cell.jpg`` -> ``a/cell.jpg.png`` and
``b/cell.jpg.png``), so no two inputs share an output. ``<output_dir>/detections.json``
lists every detection above the threshold: class id and name, score, box in
pixels ``[xmin, ymin, xmax, ymax]`` of the original image and relative.

Nothing is written over an input: an ``--output_dir`` that is, contains or lies
inside an input (an image, an images folder, the model) is an error before any
image is processed (`keras_scb.fileio.check_not_input`). The folder is written
as a whole (a temporary sibling renamed into place, `keras_scb.fileio.atomic_output`),
so an interrupted run leaves the previous folder untouched, never a mix of new
and old drawings; an existing one is replaced only with ``--overwrite``, and only
if it holds nothing but an earlier run's ``detections.json`` and the drawings it lists. An image that cannot be read or decoded
(truncated, not an image) is reported with its path and listed in
``detections.json`` with its ``error``; the other images are still processed,
and the command exits with status 1 at the end.

Class names: ``--class_names``, else ``labels.txt`` next to the model (the trainer
writes ``model_dir/labels.txt``; exports copy it), else ``class <id>``.
Drawing uses matplotlib (Agg), from the ``dev`` extra.
"""

import os
import sys
from typing import List, Sequence

from absl import flags

from exporters import common, runtime
from keras_scb import cli
from keras_scb.data.records import is_image_file, read_image
from keras_scb import flags as common_flags
from keras_scb.fileio import atomic_output, check_not_input, files_under, prepare_output, read_json

DETECTIONS_FILE = "detections.json"


def list_images(paths):
    """Image files of ``paths`` (files, or folders whose images are taken sorted),
    each file once."""
    found, seen = [], set()
    for path in paths:
        if os.path.isdir(path):
            files = [
                os.path.join(path, name) for name in sorted(os.listdir(path))
                if is_image_file(name)
            ]
        elif os.path.isfile(path):
            files = [path]
        else:
            raise FileNotFoundError(f"{path}: no such image or folder")
        for file in files:
            if os.path.realpath(file) not in seen:
                seen.add(os.path.realpath(file))
                found.append(file)
    return found


def output_paths(image_paths: Sequence[str], output_dir: str) -> List[str]:
    """The drawing of each image: ``<output_dir>/<path relative to the inputs' common folder>.png``.

    Unique for distinct inputs (relative paths from one folder differ, and the
    extension stays in the name).

    Raises:
        ValueError: ``output_dir`` is, contains or lies inside an input
            (`keras_scb.fileio.check_not_input`).
    """
    check_not_input(output_dir, image_paths, "--output_dir")
    real = [os.path.realpath(path) for path in image_paths]
    root = os.path.commonpath([os.path.dirname(path) for path in real]) if real else ""
    return [os.path.join(output_dir, os.path.relpath(path, root) + ".png") for path in real]


def foreign_files(folder):
    """The files of an earlier ``--output_dir`` that predict did not write: all but
    its ``detections.json`` and the drawings listed there (`keras_scb.fileio.atomic_output`)."""
    try:
        listed = {DETECTIONS_FILE} | {
            os.path.relpath(r["png"], folder) for r in read_json(os.path.join(folder, DETECTIONS_FILE))
            if isinstance(r, dict) and isinstance(r.get("png"), str)
        }
    except (ValueError, TypeError):
        listed = set()
    return [name for name in files_under(folder) if name not in listed]


def image_detections(outputs, index, height, width, score_threshold, class_names):
    """One image's detections above ``score_threshold`` as JSON-able dicts.

    Args:
        outputs: runner outputs (`exporters.common.DETECTION_KEYS`), batch axis first.
        index: the image's index in the batch.
        height, width: the original image size.
    """
    count = int(outputs["num_detections"][index])
    detections = []
    for box, class_id, score in zip(
        common.corner_boxes(outputs["detection_boxes"][index, :count]),
        outputs["detection_classes"][index, :count].astype(int),
        outputs["detection_scores"][index, :count],
    ):
        if score < score_threshold:
            continue
        xmin, ymin, xmax, ymax = relative = [float(v) for v in box]
        detections.append({
            "class_id": int(class_id),
            "class_name": class_name(class_names, class_id),
            "score": float(score),
            "box": [xmin * width, ymin * height, xmax * width, ymax * height],
            "box_relative": relative,
        })
    return detections


def class_name(class_names, class_id):
    if class_names and 0 <= class_id < len(class_names):
        return class_names[class_id]
    return f"class {class_id}"


def draw(image, detections, path, line_width=2.0, font_size=9):
    """Writes ``image`` with its ``detections`` (from `image_detections`) as a PNG.

    Each class has its colour (matplotlib's tab10); the label on a box reads
    ``name score``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2]
    dpi = 100
    figure = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    axes = figure.add_axes([0, 0, 1, 1])
    axes.imshow(image)
    axes.set_axis_off()
    colours = plt.get_cmap("tab10")
    for detection in detections:
        xmin, ymin, xmax, ymax = detection["box"]
        colour = colours(detection["class_id"] % 10)
        axes.add_patch(Rectangle(
            (xmin, ymin), xmax - xmin, ymax - ymin, fill=False, edgecolor=colour, linewidth=line_width
        ))
        # Above the box, or inside it when the box touches the top of the image.
        inside = ymin < 2 * font_size
        axes.text(
            xmin, ymin, f"{detection['class_name']} {detection['score']:.2f}",
            fontsize=font_size, color="white", va="top" if inside else "bottom", ha="left",
            bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.0, "alpha": 0.85},
            clip_on=True,
        )
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def predict(runner, image_paths, output_dir, score_threshold=0.5, class_names=None,
            draw_images=True, overwrite=False, inputs=()):
    """Runs ``runner`` on every image, writes the PNGs and ``detections.json``.

    Args:
        runner: an `exporters.runtime` runner (see `exporters.runtime.load_runner`).
        image_paths: image files.
        output_dir: written as a whole; PNGs are named as `output_paths` says.
        score_threshold: detections below it are neither drawn nor listed.
        class_names: names by class id, or ``None``.
        draw_images: write the PNGs (otherwise only ``detections.json``).
        overwrite: replace an earlier output folder (`foreign_files` says what
            may not be in it).
        inputs: other inputs (the model) ``output_dir`` may not be, contain or
            lie inside.

    Returns:
        The list written to ``detections.json``: per image ``{"image", "width",
        "height", "png", "detections"}``, or ``{"image", "error"}`` for an image
        that could not be read (reported on stderr; the others are processed).

    Raises:
        ValueError: an output would overwrite an input (before anything is written).
        FileExistsError: ``output_dir`` holds files and not ``overwrite``.
        OutputError: ``output_dir`` holds files predict did not write.
    """
    output_dir = os.fspath(output_dir)
    drawings = output_paths(image_paths, output_dir)
    prepare_output(output_dir, overwrite, inputs, directory=True, foreign=foreign_files,
                   flag="--output_dir")
    with atomic_output(output_dir, overwrite, directory=True, foreign=foreign_files) as temporary:
        results = _predict_into(temporary, output_dir, runner, image_paths, drawings,
                                score_threshold, class_names, draw_images)
    return results


def _predict_into(temporary, output_dir, runner, image_paths, drawings, score_threshold,
                  class_names, draw_images):
    """`predict`'s work, written under ``temporary`` (renamed to ``output_dir`` after)."""
    results = []
    for path, png in zip(image_paths, drawings):
        try:
            image = read_image(path)
        except ValueError as error:
            print(f"skipped: {error}", file=sys.stderr)
            results.append({"image": os.path.abspath(path), "error": str(error)})
            continue
        height, width = image.shape[:2]
        outputs = runner(runtime.resize_images(image, runner.image_size))
        detections = image_detections(outputs, 0, height, width, score_threshold, class_names)
        if draw_images:
            staged = os.path.join(temporary, os.path.relpath(png, output_dir))
            os.makedirs(os.path.dirname(staged), exist_ok=True)
            draw(image, detections, staged)
        results.append({
            "image": os.path.abspath(path), "width": width, "height": height,
            "png": png if draw_images else None, "detections": detections,
        })
    common.write_json(results, os.path.join(temporary, DETECTIONS_FILE))
    return results


def _define_flags():
    flags.DEFINE_string("checkpoint", None,
                        "A .tflite or .onnx file, a SavedModel folder or a .keras checkpoint.")
    flags.DEFINE_list("images", None, "Image files and/or folders of images.")
    flags.DEFINE_string("output_dir", "predictions", "Where the PNGs and detections.json go.")
    flags.DEFINE_float("score_threshold", 0.5, "Detections below this score are left out.")
    flags.DEFINE_list("class_names", None, "Class names in id order (default: the model's "
                      "labels.txt).")
    flags.DEFINE_integer("num_threads", None, "TFLite interpreter threads.")
    flags.DEFINE_bool("draw", True, "Write the PNGs (otherwise only detections.json).")
    flags.DEFINE_bool("overwrite", False, "Replace an earlier --output_dir of predict.")
    common_flags.between("score_threshold", 0, 1)
    common_flags.at_least("num_threads", 1)
    cli.define_renamed("model_path", "checkpoint")
    flags.mark_flags_as_required(["checkpoint", "images"])


def main(argv):
    del argv
    values = flags.FLAGS
    paths = list_images(values.images)
    output_paths(paths, values.output_dir)  # refused before the model is loaded
    inputs = [values.checkpoint, *values.images]  # the --images folders too
    prepare_output(values.output_dir, values.overwrite, inputs, directory=True,
                   foreign=foreign_files, flag="--output_dir")
    runner = runtime.load_runner(values.checkpoint, values.num_threads)
    class_names = common.read_class_names(values.checkpoint, values.class_names)
    results = predict(
        runner, paths, values.output_dir, values.score_threshold, class_names, values.draw,
        values.overwrite, inputs,
    )
    failed = [r["image"] for r in results if "error" in r]
    total = sum(len(r.get("detections", ())) for r in results)
    print(f"{len(results) - len(failed)} images, {total} detections >= {values.score_threshold}; "
          f"written to {values.output_dir}/")
    if failed:
        raise cli.UserError(
            f"{len(failed)} of {len(results)} images could not be read (listed in "
            f"{os.path.join(values.output_dir, DETECTIONS_FILE)}): {', '.join(failed)}"
        )


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

"""Detect objects in images and draw them: boxes labelled with class and score.

    python -m exporters.predict --model_path export/model.tflite --images photos/ --output_dir out/
    python -m exporters.predict --model_path model_dir/best.keras --images a.jpg,b.png --score_threshold 0.3

``--model_path`` is a ``.tflite`` file or a SavedModel folder (from `exporters`) or a
``.keras`` checkpoint. Each image (any size; resized to the model's input as in
training, the boxes map back to the original) gives ``<output_dir>/<name>.png``,
and ``<output_dir>/detections.json`` lists every detection above the threshold:
class id and name, score, box in pixels ``[xmin, ymin, xmax, ymax]`` of the
original image and relative.

Class names: ``--class_names``, else ``labels.txt`` next to the model (the trainer
writes ``model_dir/labels.txt``; exports copy it), else ``class <id>``.
Drawing uses matplotlib (Agg), from the ``dev`` extra.
"""

import os

from absl import flags

from exporters import common, runtime
from keras_scb import cli

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def list_images(paths):
    """Image files of ``paths`` (files, or folders whose images are taken sorted)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += [
                os.path.join(path, name) for name in sorted(os.listdir(path))
                if name.lower().endswith(IMAGE_EXTENSIONS)
            ]
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(path)
    return found


def read_image(path):
    """uint8 ``(H, W, 3)`` RGB."""
    import tensorflow as tf

    data = tf.io.read_file(path)
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


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


def predict(runner, image_paths, output_dir, score_threshold=0.5, class_names=None, draw_images=True):
    """Runs ``runner`` on every image, writes the PNGs and ``detections.json``.

    Args:
        runner: an `exporters.runtime` runner (see `exporters.runtime.load_runner`).
        image_paths: image files.
        output_dir: created if needed; PNGs are named after the images.
        score_threshold: detections below it are neither drawn nor listed.
        class_names: names by class id, or ``None``.

    Returns:
        The list written to ``detections.json``: per image ``{"image", "width",
        "height", "png", "detections"}``.
    """
    os.makedirs(output_dir, exist_ok=True)
    results = []
    for path in image_paths:
        image = read_image(path)
        height, width = image.shape[:2]
        outputs = runner(runtime.resize_images(image, runner.image_size))
        detections = image_detections(outputs, 0, height, width, score_threshold, class_names)
        png = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        if draw_images:
            draw(image, detections, png)
        results.append({
            "image": os.path.abspath(path), "width": width, "height": height,
            "png": png if draw_images else None, "detections": detections,
        })
    common.write_json(results, os.path.join(output_dir, "detections.json"))
    return results


def _define_flags():
    flags.DEFINE_string("model_path", None,
                        "A .tflite file, a SavedModel folder or a .keras checkpoint.")
    flags.DEFINE_list("images", None, "Image files and/or folders of images.")
    flags.DEFINE_string("output_dir", "predictions", "Where the PNGs and detections.json go.")
    flags.DEFINE_float("score_threshold", 0.5, "Detections below this score are left out.")
    flags.DEFINE_string("class_names", None, "Comma-separated class names (default: labels.txt).")
    flags.DEFINE_integer("num_threads", None, "TFLite interpreter threads.")
    flags.DEFINE_bool("draw", True, "Write the PNGs (otherwise only detections.json).")
    flags.mark_flags_as_required(["model_path", "images"])


def main(argv):
    del argv
    values = flags.FLAGS
    runner = runtime.load_runner(values.model_path, values.num_threads)
    class_names = common.read_class_names(values.model_path, values.class_names)
    paths = list_images(values.images)
    results = predict(
        runner, paths, values.output_dir, values.score_threshold, class_names, values.draw
    )
    total = sum(len(r["detections"]) for r in results)
    print(f"{len(results)} images, {total} detections >= {values.score_threshold}; "
          f"written to {values.output_dir}/")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

"""`exporters.predict` never loses an input and reports bad images (issue 11, item 3).

- an ``--output_dir`` that holds the inputs is refused before anything is
  written (predict replaces its folder as a whole), inputs byte for byte intact;
- inputs with the same stem (other extension, other folder) get distinct drawings;
- a truncated image is named, the other images still get their detections, and
  the command exits non-zero.

Budget: ~25 s on 2 cores (a fake runner in process; one CLI run on a tiny checkpoint).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from exporters import predict

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class FakeRunner:
    """One detection per image, a box in the middle, class 0 at 0.9 (predict's file
    handling does not depend on the model)."""

    image_size = 32

    def __call__(self, images):
        batch = len(images)
        return {
            "detection_boxes": np.tile([[[0.25, 0.25, 0.75, 0.75]]], (batch, 1, 1)).astype(np.float32),
            "detection_classes": np.zeros((batch, 1), np.float32),
            "detection_scores": np.full((batch, 1), 0.9, np.float32),
            "num_detections": np.ones(batch, np.float32),
        }


def _write_image(path, seed, size=(40, 56)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    encode = tf.io.encode_png if str(path).endswith(".png") else tf.io.encode_jpeg
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = encode(pixels).numpy()
    with open(path, "wb") as f:
        f.write(data)
    return data


def _contents(folder):
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return found


def test_output_dir_equal_to_the_input_folder_is_refused_before_anything_is_written(tmp_path):
    # predict writes its folder as a whole (issue 25): one that holds the inputs
    # would replace them, so it is refused up front, inputs byte for byte intact.
    photos = tmp_path / "photos"
    _write_image(photos / "cell.jpg", seed=0)
    _write_image(photos / "cell.png", seed=1)
    before = _contents(photos)
    with pytest.raises(ValueError, match=r"--output_dir=.*photos contains the input"):
        predict.predict(FakeRunner(), predict.list_images([str(photos)]), str(photos))
    assert _contents(photos) == before


def test_input_named_like_the_detections_file_is_refused(tmp_path):
    image = tmp_path / "detections.json"
    _write_image(tmp_path / "x.png", seed=2)
    os.rename(tmp_path / "x.png", image)
    with pytest.raises(ValueError, match="contains the input .*detections.json"):
        predict.predict(FakeRunner(), [str(image)], str(tmp_path), draw_images=False)


def test_same_stem_in_other_folders_gets_distinct_drawings(tmp_path):
    paths = [tmp_path / "in" / "a" / "cell.jpg", tmp_path / "in" / "b" / "cell.jpg",
             tmp_path / "in" / "b" / "cell.png"]
    for seed, path in enumerate(paths):
        _write_image(path, seed, size=(30 + 10 * seed, 50))
    out = tmp_path / "out"
    images = predict.list_images([str(p.parent) for p in paths])  # b/ listed twice: once each
    assert len(images) == 3
    results = predict.predict(FakeRunner(), images, str(out))
    assert sorted(_contents(out)) == [
        os.path.join("a", "cell.jpg.png"), os.path.join("b", "cell.jpg.png"),
        os.path.join("b", "cell.png.png"), "detections.json",
    ]
    for result in results:  # each drawing has its own image's size
        png = tf.io.decode_png(tf.io.read_file(result["png"])).numpy()
        assert png.shape[:2] == (result["height"], result["width"])


def test_truncated_image_is_named_and_the_others_are_processed(tmp_path):
    good = _write_image(tmp_path / "in" / "a.jpg", seed=3)
    with open(tmp_path / "in" / "b.jpg", "wb") as f:
        f.write(good[: len(good) // 2])
    _write_image(tmp_path / "in" / "c.png", seed=4)
    results = predict.predict(
        FakeRunner(), predict.list_images([str(tmp_path / "in")]), str(tmp_path / "out")
    )
    assert [os.path.basename(r["image"]) for r in results] == ["a.jpg", "b.jpg", "c.png"]
    assert "b.jpg" in results[1]["error"] and "detections" not in results[1]
    assert len(results[0]["detections"]) == len(results[2]["detections"]) == 1
    with open(tmp_path / "out" / "detections.json") as f:
        assert json.load(f) == results


def test_cli_exits_nonzero_naming_the_bad_image(tmp_path):
    import export_testing

    checkpoint = export_testing.save_checkpoint(
        export_testing.make_detector(seed=0), tmp_path / "best.keras"
    )
    _write_image(tmp_path / "in" / "a.jpg", seed=5, size=(120, 160))
    with open(tmp_path / "in" / "b.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    # The flag's old name still works, with one warning line.
    done = subprocess.run(
        [sys.executable, "-m", "exporters.predict", f"--model_path={checkpoint}",
         f"--images={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.count("warning: --model_path is deprecated; use --checkpoint.") == 1
    assert "could not be read" in done.stderr and str(tmp_path / "in" / "b.jpg") in done.stderr
    with open(tmp_path / "out" / "detections.json") as f:
        a, b = json.load(f)
    assert "detections" in a and "error" in b
    assert os.path.isfile(tmp_path / "out" / "a.jpg.png")

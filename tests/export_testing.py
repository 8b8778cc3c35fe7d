"""Tiny detectors and images for the exporter and predict tests."""

import keras
import numpy as np
import tensorflow as tf

NUM_CLASSES = 3
# Low enough that the random detector below gives tens of detections per image.
DECODER = {"score_threshold": 0.3, "max_detections": 50}


def _batch_norms(model):
    return [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def images(count, seed=0, size=300):
    """uint8 ``(count, size, size, 3)`` synthetic images (shapes on smooth backgrounds)."""
    from keras_scb.data import make_synthetic

    dataset = make_synthetic(count, image_size=(size, size), seed=seed)
    return np.stack([tf.io.decode_jpeg(r.image).numpy() for r in dataset.records])


def make_detector(seed=0):
    """MobileNetV2-SSDLite 300 at width 0.35, random weights, BatchNorm calibrated.

    At initialisation the BatchNorm statistics (mean 0, variance 1) let the
    activations vanish, so every score is ``1 / (C + 1)``. Setting each
    BatchNorm's statistics to those of a batch of images gives logits of unit
    scale that vary over the image: scores up to ~0.98, as from a trained model.
    Such a random network is, however, far more sensitive to weight rounding
    than a trained one (fp16 weights change its raw outputs by ~9% rms).
    """
    from keras_scb.models import build_detector

    keras.utils.set_random_seed(seed)
    detector = build_detector(
        "mobilenetv2-ssdlite300", NUM_CLASSES, width_multiplier=0.35, backbone_weights=None
    )
    norms = _batch_norms(detector)
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    detector(images(4, seed=100 + seed).astype("float32"), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    return detector


def save_checkpoint(detector, path, loss=None):
    """``model.save`` of ``detector``, compiled with ``loss`` first if given."""
    if loss is not None:
        detector.compile(optimizer="sgd", loss=loss)
    detector.save(path)
    return path


def keras_detections(detector, images, **decoder_kwargs):
    """The Keras inference model's (`build_inference_model`) detections as the
    exports give them (`exporters.common.export_outputs`)."""
    from exporters.common import export_outputs
    from keras_scb.postprocess import build_inference_model

    model = build_inference_model(detector, **{**DECODER, **decoder_kwargs})
    out = model.predict(np.asarray(images, np.float32), verbose=0)
    return {k: np.asarray(v) for k, v in export_outputs(out).items()}


# The two key sets a detections dict may use: the exports' and the post-processing's.
_EXPORT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
_POSTPROCESS_KEYS = ("boxes", "scores", "classes", "num_detections")


def _iou(box, boxes):
    """IoU of one corner box with ``(N, 4)`` corner boxes (either coordinate order)."""
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def assert_same_detections(
    actual, expected, score_atol=1e-4, box_atol=None, min_iou=0.9, min_count=10, per_row=(),
    score_rtol=0.0,
):
    """Asserts two runtimes' detections are the same set, image by image.

    Order-free: TF CPU kernels are not deterministic across machines, and a
    score difference of 1e-7 swaps two near-equal detections. Each expected
    detection (best first) is matched to an unmatched actual one of the same
    class with IoU >= ``min_iou`` (or corners within ``box_atol``, default
    1e-4, for boxes without area), the closest in score; a match must have
    scores within ``score_atol + score_rtol * expected score`` and, if
    ``box_atol`` is given, every box
    coordinate within it. A detection may stay unmatched only where a cut-off
    can fall differently: its score within ``score_atol`` of the lowest score
    kept in its image on its own side (the score threshold or
    ``max_detections``).

    Args:
        actual, expected: dicts of numpy arrays, batch axis first, with the
            exports' keys (``detection_boxes`` ...) or the post-processing's
            (``boxes``, ``scores``, ``classes``, ``num_detections``); both in
            the same box coordinate order (IoU does not depend on which).
        min_count: the fewest expected detections over all images (so that
            the test compares something).
        per_row: further per-detection keys (e.g. ``detection_anchor_indices``,
            ``detection_multiclass_scores``) whose matched rows must agree
            within ``score_atol``.

    Returns:
        The number of matched detections.
    """
    keys = _EXPORT_KEYS if _EXPORT_KEYS[0] in expected else _POSTPROCESS_KEYS
    boxes_key, scores_key, classes_key, count_key = keys
    matched = total = 0
    for b in range(len(expected[count_key])):
        sides = []
        for out in (actual, expected):
            n = int(out[count_key][b])
            sides.append(tuple(np.asarray(out[k])[b, :n] for k in (boxes_key, scores_key, classes_key)))
        (a_boxes, a_scores, a_classes), (e_boxes, e_scores, e_classes) = sides
        total += len(e_scores)
        free = np.ones(len(a_scores), bool)
        unmatched = []
        for i in np.argsort(-e_scores, kind="stable"):
            ok = free & (a_classes == e_classes[i])
            if ok.any():
                # Or equal corners: a box clipped to a line at the image border
                # has no area, hence IoU 0 even with itself.
                near = np.abs(a_boxes - e_boxes[i]).max(axis=1) <= (box_atol or 1e-4)
                ok &= (_iou(e_boxes[i], a_boxes) >= min_iou) | near
            if not ok.any():
                unmatched.append(i)
                continue
            j = int(np.argmin(np.where(ok, np.abs(a_scores - e_scores[i]), np.inf)))
            free[j] = False
            matched += 1
            where = f"image {b}, expected row {i} (class {e_classes[i]}, score {e_scores[i]:.6f}) / actual row {j}"
            tolerance = score_atol + score_rtol * abs(e_scores[i])
            assert abs(a_scores[j] - e_scores[i]) <= tolerance, f"{where}: score {a_scores[j]:.6f}"
            if box_atol is not None:
                np.testing.assert_allclose(a_boxes[j], e_boxes[i], atol=box_atol, rtol=0, err_msg=where)
            for key in per_row:
                np.testing.assert_allclose(
                    np.asarray(actual[key])[b, j], np.asarray(expected[key])[b, i],
                    atol=score_atol, rtol=0, err_msg=f"{where}: {key}",
                )
        for scores, rows in ((e_scores, unmatched), (a_scores, np.flatnonzero(free))):
            for row in rows:
                assert scores[row] <= scores.min() + score_atol, (
                    f"image {b}: detection {row} (score {scores[row]:.6f}) has no counterpart "
                    f"(same class, IoU >= {min_iou}) in the other runtime"
                )
    assert total >= min_count, f"only {total} expected detections: the comparison is too weak"
    return matched

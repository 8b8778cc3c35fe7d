"""Random ground truth for the benchmarks, encoded by the library's own matching.

Imported by the benchmark scripts as a sibling module (``python benchmarks/x.py``
puts ``benchmarks/`` on the path); the tests keep their own brute-force
references, which benchmarks do not import.
"""


def random_ground_truth(rng, num_images, num_classes, max_boxes=10):
    """1 to ``max_boxes`` random boxes per image, padded to ``max_boxes`` rows.

    Box sides are log-uniform between 2% and 90% of the image, so the numbers of
    positives and of anchors per object (``M_i``) are those of real data.

    Args:
        rng: a ``numpy.random.Generator``.

    Returns:
        ``(boxes, classes)``: float32 ``(N, max_boxes, 4)`` relative
        ``[xmin, ymin, xmax, ymax]`` and int32 ``(N, max_boxes)`` ids
        ``0..num_classes-1``, ``-1`` on padding rows.
    """
    import numpy as np

    sides = np.exp(rng.uniform(np.log(0.02), np.log(0.9), (num_images, max_boxes, 2)))
    lo = rng.uniform(0, 1 - sides)
    boxes = np.concatenate([lo, lo + sides], -1).astype("float32")
    counts = rng.integers(1, max_boxes + 1, num_images)
    classes = rng.integers(0, num_classes, (num_images, max_boxes))
    classes = np.where(np.arange(max_boxes) < counts[:, None], classes, -1)
    return boxes, classes.astype("int32")


def encoded_targets(boxes, classes, anchors):
    """SSD training targets ``(N, A, 6)`` as numpy, from `random_ground_truth`.

    Encoded with ``keras.ops`` (`keras_scb.matching.match_and_encode`, IoU 0.5,
    variances 0.1 / 0.2, as the input pipeline), so no TensorFlow is needed
    under JAX.

    Args:
        anchors: ``(A, 4)`` relative ``[cx, cy, w, h]``.
    """
    import keras

    from keras_scb.matching import match_and_encode

    ops = keras.ops
    anchors = ops.convert_to_tensor(anchors, "float32")
    targets = match_and_encode(boxes, classes, anchors, 0.5, (0.1, 0.2), ops)
    return ops.convert_to_numpy(targets)

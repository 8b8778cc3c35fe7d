"""Post-processing (decoding + per-class NMS) against a numpy reference; the inference model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from export_testing import assert_same_detections
from keras_scb.anchors import AnchorSpec, get_anchors
from keras_scb.matching import encode_targets
from keras_scb.models import build_detector
from keras_scb.postprocess import PostProcessor, build_inference_model

SMALL_SPEC = AnchorSpec(
    image_size=64,
    feature_map_sizes=(8, 4),
    min_sizes=(16, 32),
    max_sizes=(32, 48),
    aspect_ratios=((2,), (2,)),
)


def _iou(a, b):
    """IoU of two corner boxes; 0 for empty boxes, as TF's NMS."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / (area_a + area_b - inter)


def reference_detections(
    prediction, anchors, iou_threshold, score_threshold, max_detections, pre_nms_top_k,
    variances=(0.1, 0.2),
):
    """One image, float64 loops: SSD decoding, softmax, greedy NMS class by class.

    Returns:
        (boxes (N, 4) [xmin, ymin, xmax, ymax], scores (N,), classes (N,)), N <= K.
    """
    p = prediction.astype(np.float64)
    a = anchors.astype(np.float64)
    cx = a[:, 0] + p[:, 0] * variances[0] * a[:, 2]
    cy = a[:, 1] + p[:, 1] * variances[0] * a[:, 3]
    w = a[:, 2] * np.exp(p[:, 2] * variances[1])
    h = a[:, 3] * np.exp(p[:, 3] * variances[1])
    boxes = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), 0, 1)
    logits = p[:, 4:]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    found = []
    for c in range(probs.shape[1] - 1):
        scores = probs[:, c + 1]
        order = np.argsort(-scores, kind="stable")[:pre_nms_top_k]
        kept = []
        for i in order:
            if scores[i] > score_threshold and all(
                _iou(boxes[i], boxes[j]) <= iou_threshold for j in kept
            ):
                kept.append(i)
        found += [(scores[i], c, boxes[i]) for i in kept]
    found.sort(key=lambda d: -d[0])
    found = found[:max_detections]
    return (
        np.array([d[2] for d in found]).reshape(-1, 4),
        np.array([d[0] for d in found]),
        np.array([d[1] for d in found], dtype=np.int64),
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(iou_threshold=0.45, score_threshold=0.01, max_detections=200, pre_nms_top_k=400),
        dict(iou_threshold=0.3, score_threshold=0.05, max_detections=25, pre_nms_top_k=30),
    ],
)
def test_nms_matches_numpy_reference(options):
    rng = np.random.default_rng(3)
    anchors = get_anchors(SMALL_SPEC)
    num_classes, batch = 4, 3
    predictions = np.concatenate(
        [
            rng.normal(0, 1.0, (batch, len(anchors), 4)),
            rng.normal(0, 2.0, (batch, len(anchors), num_classes + 1)),
        ],
        axis=-1,
    ).astype(np.float32)
    out = PostProcessor(SMALL_SPEC, **options)(predictions)
    out = {k: v.numpy() for k, v in out.items()}
    k = options["max_detections"]
    assert out["boxes"].shape == (batch, k, 4) and out["classes"].dtype == np.int32
    suppressed = False
    for b in range(batch):
        boxes, scores, classes = reference_detections(predictions[b], anchors, **options)
        n = len(scores)
        assert out["num_detections"][b] == n
        _assert_matches_reference(out, b, (boxes, scores, classes))
        assert not out["boxes"][b, n:].any() and not out["scores"][b, n:].any()
        assert not out["classes"][b, n:].any()
        without_nms = reference_detections(
            predictions[b], anchors, **dict(options, iou_threshold=1.0)
        )[1]
        suppressed |= not np.array_equal(without_nms, scores)
    assert suppressed, "NMS suppressed nothing: the test data are too easy"


def test_decoding_inverts_the_encoding():
    """Offsets from `encode_targets` and confident logits give back the GT boxes."""
    rng = np.random.default_rng(4)
    num_classes, num_boxes = 20, 6
    anchors = get_anchors("ssd300")
    sides = rng.uniform(0.03, 0.6, (num_boxes, 2))
    lo = rng.uniform(0, 1 - sides)
    gt = np.concatenate([lo, lo + sides], 1).astype(np.float32)  # [xmin, ymin, xmax, ymax]
    gt_classes = rng.permutation(num_classes)[:num_boxes]
    targets = encode_targets(gt, gt_classes, anchors).numpy()
    logits = 10.0 * np.eye(num_classes + 1)[targets[:, 4].astype(int)]
    predictions = np.concatenate([targets[:, :4], logits], -1)[None].astype(np.float32)

    out = PostProcessor("ssd300")(predictions)
    n = int(out["num_detections"][0])
    assert n == num_boxes
    boxes, classes = out["boxes"][0, :n].numpy(), out["classes"][0, :n].numpy()
    for box, cls in zip(gt, gt_classes):
        (row,) = np.flatnonzero(classes == cls)
        np.testing.assert_allclose(boxes[row], box, atol=1e-5)
    np.testing.assert_allclose(
        out["scores"][0, :n], np.exp(10) / (np.exp(10) + num_classes), rtol=1e-5
    )


def test_inference_model_resizes_any_image_and_decodes(tmp_path):
    detector = build_detector("mobilenetv2-ssdlite320", 3)
    inference = build_inference_model(detector, max_detections=50, score_threshold=0.2)
    images = np.random.default_rng(5).uniform(0, 255, (2, 123, 77, 3)).astype(np.float32)
    out = inference.predict(images, verbose=0)
    assert out["boxes"].shape == (2, 50, 4) and out["num_detections"].shape == (2,)

    raw = detector.predict_raw(tf.image.resize(images, (320, 320)).numpy(), verbose=0)
    want = PostProcessor(detector.anchor_spec, max_detections=50, score_threshold=0.2)(raw)
    # Order-free: the network runs in two graphs, so near-equal scores may swap.
    assert_same_detections(out, {k: v.numpy() for k, v in want.items()}, box_atol=1e-5,
                           score_atol=1e-5, min_count=1)

    path = str(tmp_path / "inference.keras")
    inference.save(path)
    loaded = keras.saving.load_model(path)
    reloaded = loaded.predict(images, verbose=0)
    for key in out:
        np.testing.assert_array_equal(reloaded[key], out[key])


def test_decoder_computes_in_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        decoder = PostProcessor("ssd300")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert decoder.compute_dtype == "float32"


def _assert_matches_reference(out, b, want):
    """Image ``b`` of ``out`` has the reference's detections ``want`` (float64:
    near-equal scores may come in another order, so compared as sets)."""
    boxes, scores, classes = want
    n = len(scores)
    assert int(out["num_detections"][b]) == n
    image = {key: np.asarray(value)[b:b + 1] for key, value in out.items()}
    reference = {"boxes": boxes[None], "scores": scores[None], "classes": classes[None],
                 "num_detections": np.array([n])}
    # Scores to rtol 1e-5, boxes to atol 1e-5: the tolerances of the row-by-row test before.
    assert_same_detections(image, reference, box_atol=1e-5, score_atol=0.0, score_rtol=1e-5,
                           min_count=1)


def test_refinedet_outputs_decode_against_refined_anchors():
    """RefineDet: ODM offsets decode against the ARM-refined anchors, and anchors
    the ARM calls background (p > 0.99) yield no detections."""
    from keras_scb.models import Detector
    from keras_scb.postprocess import DECODER_DEFAULTS, build_postprocessor, decode_function

    spec = AnchorSpec(64, (4,), (16,), None, ((2,),))
    anchors = get_anchors(spec).astype(np.float64)
    num_classes = 2
    inputs = keras.Input((len(anchors), 3))
    fake = Detector(inputs, keras.layers.Dense(11 + num_classes)(inputs),
                    anchor_spec=spec, num_classes=num_classes, output_layout="refinedet")
    assert fake.output_layout == "refinedet" and fake.targets == "gt"
    assert build_postprocessor(fake).output_layout == "refinedet"

    rng = np.random.default_rng(0)
    raw = rng.normal(0, 1, (2, len(anchors), 11 + num_classes)).astype(np.float32)
    raw[..., 6 + 4:] *= 4  # confident ODM scores
    raw[0, :10, 4], raw[0, :10, 5] = 8.0, -8.0  # ARM background p > 0.99 on 10 anchors
    # Reference refinement in numpy (SSD decoding with variances 0.1, 0.2).
    arm = raw[..., :4].astype(np.float64)
    centre = anchors[:, :2] + arm[..., :2] * 0.1 * anchors[:, 2:]
    size = anchors[:, 2:] * np.exp(arm[..., 2:] * 0.2)
    refined = np.concatenate([centre, size], axis=-1).astype(np.float32)
    odm = raw[..., 6:].copy()
    odm[0, :10, 5:] = -1e9

    got = decode_function(fake)(tf.constant(raw))
    for b in range(2):
        _assert_matches_reference(
            got, b, reference_detections(odm[b], refined[b], **DECODER_DEFAULTS)
        )
    assert int(got["num_detections"][0]) > 0
    # No detection comes from a filtered anchor: its decoded box would be there.
    plain = reference_detections(raw[0, :, 6:], refined[0], **DECODER_DEFAULTS)[1]
    assert not np.array_equal(plain, got["scores"].numpy()[0, : len(plain)])
    # The single-image mode (TFLite, no tf.map_fn) gives the batch mode's detections.
    single = build_postprocessor(fake, single_image=True)(raw[1:])
    for key, value in single.items():
        np.testing.assert_allclose(value.numpy()[0], got[key].numpy()[1], atol=1e-5, err_msg=key)


def test_inference_model_called_on_a_tensor_keeps_batchnorm_statistics():
    detector = build_detector(
        "mobilenetv2-ssdlite300", 3, width_multiplier=0.35, backbone_weights=None
    )
    inference = build_inference_model(detector)
    before = [np.array(v) for v in detector.non_trainable_variables]
    images = np.random.default_rng(0).uniform(0, 255, (2, 200, 260, 3)).astype("float32")
    direct = inference(images)
    after = [np.array(v) for v in detector.non_trainable_variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    predicted = inference.predict_on_batch(images)
    np.testing.assert_allclose(np.asarray(direct["scores"]), predicted["scores"], atol=1e-5)


@pytest.mark.parametrize("single_image", [False, True])
def test_extra_outputs_point_at_the_kept_anchors(single_image):
    """``extra_outputs``: each kept detection's anchor index, its per-class scores,
    and every anchor's decoded box and scores; the detections themselves unchanged."""
    rng = np.random.default_rng(6)
    anchors = get_anchors(SMALL_SPEC)
    batch = 1 if single_image else 2
    raw = np.concatenate(
        [rng.normal(0, 1.0, (batch, len(anchors), 4)), rng.normal(0, 2.0, (batch, len(anchors), 4))],
        axis=-1,
    ).astype(np.float32)
    options = dict(max_detections=30, score_threshold=0.05, single_image=single_image)
    plain = PostProcessor(SMALL_SPEC, **options)(raw)
    out = {k: v.numpy() for k, v in PostProcessor(SMALL_SPEC, extra_outputs=True, **options)(raw).items()}
    for key, value in plain.items():
        np.testing.assert_array_equal(out[key], value.numpy())
    assert out["raw_boxes"].shape == (batch, len(anchors), 4)
    assert out["raw_scores"].shape == out["multiclass_scores"].shape[:1] + (len(anchors), 4)
    for b in range(batch):
        n = int(out["num_detections"][b])
        assert n > 5
        rows = out["anchor_indices"][b, :n]
        np.testing.assert_array_equal(out["raw_boxes"][b, rows], out["boxes"][b, :n])
        np.testing.assert_array_equal(out["raw_scores"][b, rows], out["multiclass_scores"][b, :n])
        np.testing.assert_array_equal(
            out["multiclass_scores"][b, np.arange(n), out["classes"][b, :n] + 1], out["scores"][b, :n]
        )
        assert not out["multiclass_scores"][b, n:].any() and not out["anchor_indices"][b, n:].any()
    np.testing.assert_allclose(out["raw_scores"].sum(-1), 1.0, rtol=1e-5)

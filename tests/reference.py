"""Brute-force numpy references (float64, loops, no TensorFlow) for matching and losses."""

import math

import numpy as np


def corners(anchors):
    a = np.asarray(anchors, np.float64)
    return np.concatenate([a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2], axis=1)


def iou_matrix(boxes, anchor_corners):
    out = np.zeros((len(boxes), len(anchor_corners)))
    for g, b in enumerate(np.asarray(boxes, np.float64)):
        for_area = (b[2] - b[0]) * (b[3] - b[1])
        lo = np.maximum(b[:2], anchor_corners[:, :2])
        hi = np.minimum(b[2:], anchor_corners[:, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        areas = np.prod(anchor_corners[:, 2:] - anchor_corners[:, :2], axis=1)
        out[g] = inter / (for_area + areas - inter)
    return out


def match(boxes, classes, anchors, threshold=0.5):
    """The SSD authors' rule, written as their loop. Returns (matched (A,), iou (G, A))."""
    anchor_corners = corners(anchors)
    valid = [g for g in range(len(classes)) if classes[g] >= 0]
    overlaps = iou_matrix(boxes, anchor_corners)
    matched = -np.ones(len(anchors), np.int64)
    for a in range(len(anchors)):
        best_g, best = -1, -1.0
        for g in valid:
            if overlaps[g, a] > best:
                best_g, best = g, overlaps[g, a]
        if best >= threshold:
            matched[a] = best_g
    for g in valid:
        matched[int(np.argmax(overlaps[g]))] = g
    return matched, overlaps


def encode(box, anchor, variances=(0.1, 0.2)):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = box[2] - box[0], box[3] - box[1]
    return [
        (cx - anchor[0]) / (variances[0] * anchor[2]),
        (cy - anchor[1]) / (variances[0] * anchor[3]),
        math.log(w / anchor[2]) / variances[1],
        math.log(h / anchor[3]) / variances[1],
    ]


def weight(m, weighting, alpha=1.0, beta=3.0):
    return {
        "uniform": 1.0,
        "inverse_log": 1.0 / (math.log(m) + 1.0),
        "inverse_sqrt": 1.0 / math.sqrt(m),
        "inverse": 1.0 / m,
        "scb": beta * (math.log(m) + alpha) / m,
        "scb_mean_normalised": beta * (math.log(m) + alpha) / m,  # before the rescaling
        "uniform_beta": beta,
    }[weighting]


def positive_weights(positives, matched, weighting, alpha=1.0, beta=3.0):
    """``{anchor: weight}`` for one image's positive anchors (a list), ``matched``
    their box per anchor: M counted by a loop, then `weight`."""
    counts = {}
    for a in positives:
        counts[matched[a]] = counts.get(matched[a], 0) + 1
    weights = {a: weight(counts[matched[a]], weighting, alpha, beta) for a in positives}
    if weighting == "scb_mean_normalised" and positives:
        # Mean 1 over the image's positive anchors (anchor_weights.mean_normalise_per_image).
        mean = sum(weights.values()) / len(positives)
        weights = {a: w / mean for a, w in weights.items()}
    return weights


def anchor_sample_weights(matched, positive, ignore, weighting, alpha=1.0, beta=3.0):
    """``(B, A)`` float64 by loops: a positive anchor's box weight, 1 on negatives,
    0 on ``ignore`` anchors (`keras_scb.anchor_weights.anchor_sample_weights`)."""
    out = np.ones(np.shape(matched), np.float64)
    for b in range(len(out)):
        positives = [a for a in range(out.shape[1]) if positive[b][a]]
        for a, w in positive_weights(positives, matched[b], weighting, alpha, beta).items():
            out[b, a] = w
        for a in range(out.shape[1]):
            if ignore[b][a]:
                out[b, a] = 0.0
    return out


def multibox_loss(y_true, y_pred, weighting="scb", alpha=1.0, beta=3.0,
                  neg_pos_ratio=3, apply_to="classification", negative_mask=None,
                  class_weights=None):
    """Loops over images and anchors; float64."""
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    total, normalizer = 0.0, 0.0
    for b in range(len(y_true)):
        labels = y_true[b, :, 4].astype(int)
        matched = y_true[b, :, 5].astype(int)
        allowed = np.ones(len(labels), bool) if negative_mask is None else negative_mask[b]
        positives = [a for a in range(len(labels)) if labels[a] > 0]
        anchor_weights = positive_weights(positives, matched, weighting, alpha, beta)
        ce = []
        for a in range(len(labels)):
            logits = y_pred[b, a, 4:]
            top = logits.max()
            log_z = top + math.log(np.exp(logits - top).sum())
            ce.append(log_z - logits[labels[a]])
        for a in positives:
            w = anchor_weights[a] * (1.0 if class_weights is None else class_weights[labels[a] - 1])
            diff = y_pred[b, a, :4] - y_true[b, a, :4]
            box = sum(0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in diff)
            total += w * ce[a] + (w if apply_to == "both" else 1.0) * box
        negatives = sorted(
            (ce[a] for a in range(len(labels)) if labels[a] == 0 and allowed[a]),
            reverse=True,
        )
        total += sum(negatives[: min(neg_pos_ratio * len(positives), len(negatives))])
        normalizer += max(len(positives), 1)
    return total / normalizer


def random_boxes(rng, max_boxes=10, image_size=300, max_pad=3):
    """0..max_boxes boxes with sides from 2 px to the whole image, plus padding rows."""
    n = int(rng.integers(0, max_boxes + 1))
    boxes = []
    for _ in range(n):
        w, h = (np.exp(rng.uniform(np.log(2), np.log(image_size), 2)) / image_size)
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        boxes.append([x0, y0, x0 + w, y0 + h])
    pad = int(rng.integers(0, max_pad + 1))
    boxes = np.array(boxes + [[0, 0, 0, 0]] * pad, np.float32).reshape(-1, 4)
    classes = np.concatenate([rng.integers(0, 20, n), -np.ones(pad, int)]).astype(np.int32)
    return boxes, classes

"""RefineDet's training loss transcribed from the authors' Caffe code, as loops.

Source: sfzhang15/RefineDet. ``src/caffe/layers/multibox_loss_layer.cpp``
(``MultiBoxLossLayer::Forward_cpu``) and ``src/caffe/util/bbox_util.cpp``
(``GetGroundTruth``, ``JaccardOverlap``, ``MatchBBox``, ``CasRegFindMatches``,
``MineHardExamples``, ``EncodeBBox``, ``DecodeBBox``, ``ComputeConfLoss``),
``src/caffe/layers/loss_layer.cpp`` (``GetNormalizer``), with the parameters of
``examples/refinedet/VGG16_VOC2007_320.py``: ``match_type: PER_PREDICTION``,
``overlap_threshold: 0.5``, ``neg_overlap: 0.5``, ``mining_type:
MAX_NEGATIVE``, ``neg_pos_ratio: 3``, ``loc_weight: (3 + 1) / 4``,
``normalization: VALID``, ``objectness_score: 0.01``, ``code_type:
CENTER_SIZE``, variances ``[0.1, 0.1, 0.2, 0.2]``, ``share_location``,
``use_prior_for_matching``, ``ignore_cross_boundary_bbox: false``; the
``odm_loss`` layer gets the ARM softmax (``arm_conf_flatten``) and ARM offsets
as its 5th and 6th bottoms, the ``arm_loss`` layer neither.

The one addition to the Caffe layer is the SCB paper's object weighting, applied
as `keras_scb.losses` applies it (the thing under test): a positive anchor of
box ``i``, which has ``M_i`` positive anchors in its image, has its
classification loss (and with ``apply_to="both"`` its localisation loss)
multiplied by ``W(M_i)``; the normaliser stays the unweighted count. With
``weighting="uniform"`` this is exactly the Caffe layer.

float64, numpy only. Boxes are relative corners; anchors come in
``[cx, cy, w, h]`` and are turned into Caffe's corner priors.
"""

import math

import numpy as np

FLT_MIN = np.finfo(np.float32).tiny
VARIANCES = (0.1, 0.1, 0.2, 0.2)
OVERLAP_THRESHOLD = 0.5
NEG_OVERLAP = 0.5
OBJECTNESS_SCORE = 0.01


def scb_weight(m, weighting, alpha=1.0, beta=3.0):
    """The paper's Table 1 weightings of an object with ``m`` positive anchors."""
    return {
        "uniform": 1.0,
        "inverse_log": 1.0 / (math.log(m) + 1.0),
        "inverse_sqrt": 1.0 / math.sqrt(m),
        "inverse": 1.0 / m,
        "scb": beta * (math.log(m) + alpha) / m,
    }[weighting]


def get_ground_truth(y_true, num_classes):
    """``GetGroundTruth``: per image, [(corners, label)] with labels 1..C
    (background is 0); with ``num_classes == 2`` every label >= 2 becomes 1."""
    all_gt = []
    for image in np.asarray(y_true, np.float64):
        gt = []
        for row in image:
            if row[4] < 0:
                continue
            label = int(row[4]) + 1
            if num_classes == 2 and label >= 2:
                label = 1
            gt.append((row[:4], label))
        all_gt.append(gt)
    return all_gt


def bbox_size(b):
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return (b[2] - b[0]) * (b[3] - b[1])


def jaccard_overlap(b1, b2):
    """``JaccardOverlap`` (normalised boxes) with ``IntersectBBox``."""
    if b2[0] > b1[2] or b2[2] < b1[0] or b2[1] > b1[3] or b2[3] < b1[1]:
        return 0.0
    inter = [max(b1[0], b2[0]), max(b1[1], b2[1]), min(b1[2], b2[2]), min(b1[3], b2[3])]
    width, height = inter[2] - inter[0], inter[3] - inter[1]
    if width > 0 and height > 0:
        size = width * height
        return size / (bbox_size(b1) + bbox_size(b2) - size)
    return 0.0


def match_bbox(gt_bboxes, pred_bboxes):
    """``MatchBBox`` with label -1 (all boxes) and ``PER_PREDICTION``.

    Returns ``(match_indices, match_overlaps)``, one entry per prediction.
    """
    num_pred, num_gt = len(pred_bboxes), len(gt_bboxes)
    match_indices = [-1] * num_pred
    match_overlaps = [0.0] * num_pred
    if num_gt == 0:
        return match_indices, match_overlaps
    overlaps = {}  # std::map<int, std::map<int, float>>: iterated in key order
    for i in range(num_pred):
        for j in range(num_gt):
            overlap = jaccard_overlap(pred_bboxes[i], gt_bboxes[j])
            if overlap > 1e-6:
                match_overlaps[i] = max(match_overlaps[i], overlap)
                overlaps.setdefault(i, {})[j] = overlap
    # Bipartite matching.
    gt_pool = list(range(num_gt))
    while gt_pool:
        max_idx, max_gt_idx, max_overlap = -1, -1, -1.0
        for i in sorted(overlaps):
            if match_indices[i] != -1:
                continue
            for j in gt_pool:
                if j in overlaps[i] and overlaps[i][j] > max_overlap:
                    max_idx, max_gt_idx, max_overlap = i, j, overlaps[i][j]
        if max_idx == -1:
            break
        match_indices[max_idx] = max_gt_idx
        match_overlaps[max_idx] = max_overlap
        gt_pool.remove(max_gt_idx)
    # PER_PREDICTION: the rest take their best box above the threshold.
    for i in sorted(overlaps):
        if match_indices[i] != -1:
            continue
        max_gt_idx, max_overlap = -1, -1.0
        for j in range(num_gt):
            if j not in overlaps[i]:
                continue
            overlap = overlaps[i][j]
            if overlap >= OVERLAP_THRESHOLD and overlap > max_overlap:
                max_gt_idx, max_overlap = j, overlap
        if max_gt_idx != -1:
            match_indices[i] = max_gt_idx
            match_overlaps[i] = max_overlap
    return match_indices, match_overlaps


def decode_bbox(prior, loc):
    """``DecodeBBox``, CENTER_SIZE, variance not in the target, no clipping."""
    pw, ph = prior[2] - prior[0], prior[3] - prior[1]
    pcx, pcy = (prior[0] + prior[2]) / 2.0, (prior[1] + prior[3]) / 2.0
    cx = VARIANCES[0] * loc[0] * pw + pcx
    cy = VARIANCES[1] * loc[1] * ph + pcy
    w = math.exp(VARIANCES[2] * loc[2]) * pw
    h = math.exp(VARIANCES[3] * loc[3]) * ph
    return np.array([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0])


def encode_bbox(prior, bbox):
    """``EncodeBBox``, CENTER_SIZE, variance not in the target."""
    pw, ph = prior[2] - prior[0], prior[3] - prior[1]
    pcx, pcy = (prior[0] + prior[2]) / 2.0, (prior[1] + prior[3]) / 2.0
    bw, bh = bbox[2] - bbox[0], bbox[3] - bbox[1]
    bcx, bcy = (bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0
    return np.array([
        (bcx - pcx) / pw / VARIANCES[0],
        (bcy - pcy) / ph / VARIANCES[1],
        math.log(bw / pw) / VARIANCES[2],
        math.log(bh / ph) / VARIANCES[3],
    ])


def softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


def conf_loss(logits, label):
    """``ComputeConfLoss`` / ``SoftmaxWithLoss`` of one prediction."""
    return -math.log(max(softmax(logits)[label], FLT_MIN))


def smooth_l1(diff):
    return sum(0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in diff)


def multibox_loss_layer(loc, conf, priors, all_gt, arm_conf=None, arm_loc=None,
                        weighting="uniform", apply_to="classification", alpha=1.0,
                        beta=3.0, neg_pos_ratio=3.0, objectness_score=OBJECTNESS_SCORE):
    """``MultiBoxLossLayer::Forward_cpu`` (plus the SCB weighting, see the module).

    Args:
        loc: ``(B, A, 4)`` offsets; conf: ``(B, A, num_classes)`` logits.
        priors: ``(A, 4)`` corners.
        all_gt: from `get_ground_truth`.
        arm_conf: ``(B, A, 2)`` ARM softmax, or None (the ``arm_loss`` layer).
        arm_loc: ``(B, A, 4)`` ARM offsets, or None: the priors are then used as
            they are (``FindMatches``), else refined (``CasRegFindMatches``).

    Returns:
        ``(loss, num_matches)``.
    """
    loc, conf = np.asarray(loc, np.float64), np.asarray(conf, np.float64)
    loc_loss = conf_sum = 0.0
    num_matches = 0
    loc_weight = (neg_pos_ratio + 1.0) / 4.0
    for i, gt in enumerate(all_gt):
        if arm_loc is None:
            image_priors = priors
        else:
            image_priors = [decode_bbox(p, l) for p, l in zip(priors, arm_loc[i])]
        match_indices, match_overlaps = match_bbox([g[0] for g in gt], image_priors)
        positives = [m for m, g in enumerate(match_indices) if g > -1]
        num_matches += len(positives)
        counts = {}
        for m in positives:
            counts[match_indices[m]] = counts.get(match_indices[m], 0) + 1
        # MineHardExamples, MAX_NEGATIVE: the background loss of the eligible
        # (unmatched, overlap < neg_overlap, ARM object score >= objectness_score).
        losses = [conf_loss(conf[i, m], 0) for m in range(len(priors))]
        eligible = []
        for m in range(len(priors)):
            if match_indices[m] == -1 and match_overlaps[m] < NEG_OVERLAP:
                if arm_conf is None or arm_conf[i, m, 1] >= objectness_score:
                    eligible.append((losses[m], m))
        num_sel = min(int(len(positives) * neg_pos_ratio), len(eligible))
        eligible.sort(key=lambda pair: -pair[0])
        negatives = [m for _, m in eligible[:num_sel]]
        for m in positives:
            box, label = gt[match_indices[m]]
            w = scb_weight(counts[match_indices[m]], weighting, alpha, beta)
            target = encode_bbox(image_priors[m], box)
            loc_loss += (w if apply_to == "both" else 1.0) * smooth_l1(loc[i, m] - target)
            conf_sum += w * conf_loss(conf[i, m], label)
        for m in negatives:
            conf_sum += conf_loss(conf[i, m], 0)
    normalizer = max(1.0, float(num_matches))  # GetNormalizer, VALID
    return loc_weight * loc_loss / normalizer + conf_sum / normalizer, num_matches


def refinedet_loss(y_true, y_pred, anchors, arm_weighting="scb", odm_weighting="uniform",
                   apply_to="classification", alpha=1.0, beta=3.0, neg_pos_ratio=3,
                   objectness_score=OBJECTNESS_SCORE):
    """``arm_loss`` + ``odm_loss`` of the RefineDet train net.

    Args:
        y_true: ``(B, G, 5)`` ``[xmin, ymin, xmax, ymax, class]``, class -1 = padding.
        y_pred: ``(B, A, 4 + 2 + 4 + C + 1)`` as `keras_scb.refinedet_loss`.
        anchors: ``(A, 4)`` ``[cx, cy, w, h]``.

    Returns:
        Scalar float.
    """
    y_pred = np.asarray(y_pred, np.float64)
    anchors = np.asarray(anchors, np.float64)
    priors = np.concatenate([anchors[:, :2] - anchors[:, 2:] / 2,
                             anchors[:, :2] + anchors[:, 2:] / 2], axis=1)
    num_classes = y_pred.shape[-1] - 10
    common = dict(apply_to=apply_to, alpha=alpha, beta=beta, neg_pos_ratio=neg_pos_ratio)
    arm_loc, arm_logits = y_pred[..., :4], y_pred[..., 4:6]
    arm, _ = multibox_loss_layer(arm_loc, arm_logits, priors, get_ground_truth(y_true, 2),
                                 weighting=arm_weighting, **common)
    arm_conf = np.array([[softmax(l) for l in image] for image in arm_logits])
    odm, _ = multibox_loss_layer(y_pred[..., 6:10], y_pred[..., 10:], priors,
                                 get_ground_truth(y_true, num_classes), arm_conf=arm_conf,
                                 arm_loc=arm_loc, weighting=odm_weighting,
                                 objectness_score=objectness_score, **common)
    return arm + odm

"""Converted reference checkpoints compute what the references compute (``make test-peers``).

torchvision's ``ssd300_vgg16`` and an ssd.pytorch-layout SSD300 (its layer
list rebuilt here with ``torch.nn``), with random weights (biases and the
L2Norm scale too), saved as ``.pth`` state dicts and converted by
``keras_scb.convert_weights``; then, on a real BCCD image, the converted
``.keras`` gives the reference's anchors, raw box regressions and class logits
(per anchor, within 1e-4 of their range) and its final detections at the
original image size (as sets: class, IoU >= 0.99, score within 1e-4).

Needs torch and torchvision next to the library (the ``.venv-peers`` of
``make test-peers``); skipped where they are missing.
"""

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# torchvision before TensorFlow: importing torchvision imports triton (through
# torch._dynamo), which crashes (segmentation fault) once TensorFlow is loaded.
torchvision = pytest.importorskip("torchvision")

import tensorflow as tf  # noqa: E402

from keras_scb import convert_weights  # noqa: E402
from keras_scb.checkpoints import load_checkpoint  # noqa: E402
from keras_scb.models.reference_weights import TORCHVISION_COCO_NAMES  # noqa: E402
from keras_scb.postprocess import build_postprocessor  # noqa: E402

pytestmark = pytest.mark.peers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(REPO, "data", "bccd", "JPEGImages", "BloodImage_00007.jpg")
RANGE_TOLERANCE = 1e-4  # of each tensor's range
IOU, SCORE = 0.99, 1e-4


def _pixels():
    """The BCCD image, uint8 ``(H, W, 3)`` RGB."""
    return tf.io.decode_jpeg(tf.io.read_file(IMAGE), channels=3).numpy()


def _randomise(module, seed):
    """Every bias and the L2Norm scale random too (the references' init zeroes
    biases and sets the scale to 20, which would hide a mix-up of them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name in ("backbone.scale_weight", "L2Norm.weight"):
                parameter.copy_(10 + 20 * torch.rand(parameter.shape, generator=generator))
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
            elif "classification_head" in name or name.startswith("conf."):
                # Smaller class logits (std ~0.6 on the image): the top scores
                # spread over 0.1-0.6 instead of crowding at 1.0, where ties
                # would make the NMS order arbitrary.
                parameter.mul_(0.3)


def _agree(ours, theirs, name, report):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, name
    span = float(theirs.max() - theirs.min())
    difference = float(np.abs(ours - theirs).max())
    report.append(f"{name}: max |difference| {difference:.3g} (range {span:.3g}, "
                  f"{difference / span:.2g} of it)")
    assert difference <= RANGE_TOLERANCE * span, report[-1]


def _iou(a, b):
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(hi - lo, 0, None))
    area = lambda box: np.prod(box[2:] - box[:2])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _same_detections(ours, theirs, report, name):
    """Each of theirs is one of ours (class, IoU, score) and the counts agree,
    but for detections within the score tolerance of the lowest kept score (a
    cut-off that rounding can move)."""
    (ob, os_, oc), (tb, ts, tc) = ours, theirs
    floor = min(ts.min(), os_.min()) + SCORE if len(ts) else 0
    unmatched, ious, score_differences = 0, [], []
    used = np.zeros(len(ob), bool)
    for box, score, cls in zip(tb, ts, tc):
        candidates = [
            i for i in np.flatnonzero(~used & (oc == cls) & (np.abs(os_ - score) <= SCORE))
            if _iou(ob[i], box) >= IOU
        ]
        if candidates:
            used[candidates[0]] = True
            ious.append(_iou(ob[candidates[0]], box))
            score_differences.append(abs(os_[candidates[0]] - score))
        elif score > floor:
            unmatched += 1
    extra = int(np.count_nonzero(~used & (os_ > floor)))
    report.append(f"{name}: {len(ts)} reference detections, {len(ob)} ours, "
                  f"{unmatched} of theirs unmatched, {extra} of ours extra (above the "
                  f"cut-off band); matched: min IoU {min(ious, default=0):.6f}, max |score "
                  f"difference| {max(score_differences, default=0):.2g}")
    assert len(ts) > 20, report[-1]  # the image gives enough detections to test
    assert unmatched == 0 and extra == 0, report[-1]


def _converted(model, source, folder, seed):
    """``model`` randomised, saved as a ``.pth``, converted, and the ``.keras`` loaded."""
    _randomise(model, seed)
    path = str(folder / f"{source}.pth")
    torch.save(model.state_dict(), path)
    output = str(folder / f"{source}.keras")
    convert_weights.convert(source, path, output)
    return load_checkpoint(output)


@pytest.fixture(scope="module")
def report():
    lines = []
    yield lines
    print("\n" + "\n".join(lines))


def test_torchvision_ssd300_vgg16_converts_exactly(tmp_path, report):
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    ours = _converted(model, "torchvision", tmp_path, seed=0)
    assert ours.count_params() == 35_641_826
    assert ours.class_names == TORCHVISION_COCO_NAMES

    pixels = _pixels()
    height, width = pixels.shape[:2]
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        batch, _ = model.transform([image])
        features = list(model.backbone(batch.tensors).values())
        head = model.head(features)
        anchors = model.anchor_generator(batch, features)[0].numpy()
        detections = model([image])[0]

    # Our path: the image resized as the library does (bilinear, half-pixel
    # centres, no antialiasing: torch's interpolate in GeneralizedRCNNTransform).
    resized = tf.image.resize(pixels[None].astype(np.float32), (300, 300)).numpy()
    raw = ours.predict_on_batch(resized)
    _agree(ours.anchors[:, :2] - ours.anchors[:, 2:] / 2, anchors[:, :2] / 300,
           "torchvision anchors (xmin, ymin)", report)
    _agree(ours.anchors[:, :2] + ours.anchors[:, 2:] / 2, anchors[:, 2:] / 300,
           "torchvision anchors (xmax, ymax)", report)
    _agree(raw[0, :, :4], head["bbox_regression"][0].numpy(),
           "torchvision box regressions", report)
    _agree(raw[0, :, 4:], head["cls_logits"][0].numpy(), "torchvision class logits", report)

    decoded = build_postprocessor(ours)(raw)
    n = int(decoded["num_detections"][0])
    scale = np.array([width, height, width, height])
    ours_detections = (
        np.asarray(decoded["boxes"][0, :n]) * scale,
        np.asarray(decoded["scores"][0, :n]),
        np.asarray(decoded["classes"][0, :n]) + 1,  # torchvision label = our class + 1
    )
    theirs = tuple(detections[k].numpy() for k in ("boxes", "scores", "labels"))
    _same_detections(ours_detections, theirs, report, f"torchvision detections at {width}x{height}")


# ssd.pytorch's SSD300 (amdegroot/ssd.pytorch ssd.py: `vgg`, `add_extras`,
# `multibox`, base/extras/mbox '300'), its layer list rebuilt with torch.nn.
_BASE = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
_EXTRAS = [256, "S", 512, 128, "S", 256, 128, 256, 128, 256]
_MBOX = [4, 6, 6, 6, 4, 4]


def _ssd_pytorch_vgg():
    nn = torch.nn
    layers, channels = [], 3
    for v in _BASE:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "C":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    layers += [nn.MaxPool2d(3, 1, 1), nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
               nn.ReLU(inplace=True), nn.Conv2d(1024, 1024, 1), nn.ReLU(inplace=True)]
    return layers


def _ssd_pytorch_extras():
    layers, channels, flag = [], 1024, False
    for k, v in enumerate(_EXTRAS):
        if channels != "S":
            if v == "S":
                layers.append(torch.nn.Conv2d(channels, _EXTRAS[k + 1], (1, 3)[flag], 2, 1))
            else:
                layers.append(torch.nn.Conv2d(channels, v, (1, 3)[flag]))
            flag = not flag
        channels = v
    return layers


class _SSDPyTorch(torch.nn.Module):
    """ssd.pytorch's SSD in "train" phase: ``x -> (loc (N, A, 4), conf (N, A, C+1))``."""

    def __init__(self, num_classes):
        super().__init__()
        nn = torch.nn
        self.num_classes = num_classes
        self.vgg = nn.ModuleList(_ssd_pytorch_vgg())
        self.L2Norm = nn.Module()
        self.L2Norm.weight = nn.Parameter(torch.full((512,), 20.0))
        self.extras = nn.ModuleList(_ssd_pytorch_extras())
        sources = [512, 1024] + [layer.out_channels for layer in self.extras[1::2]]
        self.loc = nn.ModuleList(
            nn.Conv2d(c, k * 4, 3, padding=1) for c, k in zip(sources, _MBOX))
        self.conf = nn.ModuleList(
            nn.Conv2d(c, k * num_classes, 3, padding=1) for c, k in zip(sources, _MBOX))

    def forward(self, x):
        sources = []
        for k in range(23):
            x = self.vgg[k](x)
        # layers/modules/l2norm.py: x / (sqrt(sum x^2) + eps) * weight, eps 1e-10.
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
        sources.append(self.L2Norm.weight[None, :, None, None] * x / norm)
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = torch.nn.functional.relu(v(x))
            if k % 2 == 1:
                sources.append(x)
        loc = torch.cat([l(s).permute(0, 2, 3, 1).reshape(s.shape[0], -1)
                         for s, l in zip(sources, self.loc)], 1)
        conf = torch.cat([c(s).permute(0, 2, 3, 1).reshape(s.shape[0], -1)
                          for s, c in zip(sources, self.conf)], 1)
        return loc.view(loc.shape[0], -1, 4), conf.view(conf.shape[0], -1, self.num_classes)


def _ssd_pytorch_priors():
    """layers/functions/prior_box.py with data/config.py's `voc` (cx, cy, w, h)."""
    maps, steps = [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]
    min_sizes, max_sizes = [30, 60, 111, 162, 213, 264], [60, 111, 162, 213, 264, 315]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    mean = []
    for k, f in enumerate(maps):
        for i in range(f):
            for j in range(f):
                f_k = 300 / steps[k]
                cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
                s_k = min_sizes[k] / 300
                mean += [cx, cy, s_k, s_k]
                s_k_prime = math.sqrt(s_k * (max_sizes[k] / 300))
                mean += [cx, cy, s_k_prime, s_k_prime]
                for ar in ratios[k]:
                    mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                    mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    return np.clip(np.array(mean).reshape(-1, 4), 0, 1)


def _ssd_pytorch_detect(loc, conf, priors, top_k=200, conf_thresh=0.01, nms_thresh=0.45):
    """layers/functions/detection.py (`Detect`) for one image: per class, the
    scores above ``conf_thresh``, NMS among the ``top_k`` best (box_utils.nms
    keeps ``idx[-top_k:]``), every kept box; torchvision's nms stands in for
    box_utils.nms (same greedy NMS, IoU > threshold suppresses), and the boxes
    are clipped first (below)."""
    variances = (0.1, 0.2)
    boxes = torch.cat([priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])], 1)
    boxes = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    # Not in Detect: clipped to the image before NMS, as our post-processing
    # (and torchvision's) do; a post-processing choice, not the weights'.
    boxes = boxes.clamp(0, 1)
    scores = torch.softmax(conf, dim=-1)
    out_boxes, out_scores, out_classes = [], [], []
    for cl in range(1, scores.shape[1]):
        mask = scores[:, cl] > conf_thresh
        class_scores, class_boxes = scores[mask, cl], boxes[mask]
        order = class_scores.argsort(descending=True)[:top_k]
        keep = torchvision.ops.nms(class_boxes[order], class_scores[order], nms_thresh)
        out_boxes.append(class_boxes[order][keep])
        out_scores.append(class_scores[order][keep])
        out_classes.append(torch.full((len(keep),), cl - 1))
    return torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_classes)


def test_ssd_pytorch_layout_converts_exactly(tmp_path, report):
    torch.manual_seed(1)
    model = _SSDPyTorch(21).eval()
    for layer in list(model.vgg) + list(model.extras) + list(model.loc) + list(model.conf):
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.xavier_uniform_(layer.weight)
    ours = _converted(model, "ssd.pytorch", tmp_path, seed=1)
    assert ours.num_classes == 20 and len(ours.class_names) == 20

    pixels = _pixels()
    height, width = pixels.shape[:2]
    resized = tf.image.resize(pixels[None].astype(np.float32), (300, 300)).numpy()
    # ssd.pytorch's BaseTransform: BGR pixels minus (104, 117, 123), NCHW.
    bgr = resized[0, :, :, ::-1] - np.array([104.0, 117.0, 123.0])
    x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1))[None]).float()
    with torch.no_grad():
        loc, conf = model(x)
    priors = _ssd_pytorch_priors()
    raw = ours.predict_on_batch(resized)
    _agree(ours.anchors, priors, "ssd.pytorch priors", report)
    _agree(raw[0, :, :4], loc[0].numpy(), "ssd.pytorch loc", report)
    _agree(raw[0, :, 4:], conf[0].numpy(), "ssd.pytorch conf", report)

    boxes, scores, classes = _ssd_pytorch_detect(
        loc[0], conf[0], torch.from_numpy(priors).float())
    order = scores.argsort(descending=True)
    scale = np.array([width, height, width, height])
    theirs = (boxes[order].numpy() * scale, scores[order].numpy(), classes[order].numpy())
    # Detect keeps up to top_k per class and does not cap the total.
    decoded = build_postprocessor(ours, pre_nms_top_k=200, max_detections=200 * 20)(raw)
    n = int(decoded["num_detections"][0])
    ours_detections = (np.asarray(decoded["boxes"][0, :n]) * scale,
                       np.asarray(decoded["scores"][0, :n]),
                       np.asarray(decoded["classes"][0, :n]))
    _same_detections(ours_detections, theirs, report, f"ssd.pytorch detections at {width}x{height}")


def test_torchvision_vgg16_backbone_file_initialises_the_trunk(tmp_path, report):
    """VGG16_Weights.IMAGENET1K_FEATURES's layout: a whole torchvision VGG16 state dict
    (features.N, classifier.N), RGB; conv1_1 .. conv5_3 go in, fc6/fc7 stay new."""
    from keras_scb.models import build_detector
    from keras_scb.models.layers import NORMALIZATIONS

    torch.manual_seed(2)
    vgg = torchvision.models.vgg16(weights=None)
    path = str(tmp_path / "vgg16_features.pth")
    torch.save(vgg.state_dict(), path)
    ours = build_detector("ssd300", 3, backbone_weights=path)
    assert ours.input_normalization == NORMALIZATIONS["torchvision"]
    # conv5_3 (features.28) through our trunk: the same map as torchvision's features[:30].
    pixels = tf.image.resize(_pixels()[None].astype(np.float32), (300, 300)).numpy()
    import keras

    trunk = keras.Model(ours.inputs, ours.get_layer("block5_conv3").output)
    mine = trunk.predict_on_batch(pixels)[0]
    mean = torch.tensor([0.48235, 0.45882, 0.40784])[:, None, None] * 255
    x = torch.from_numpy(pixels[0].transpose(2, 0, 1).copy())[None] - mean
    features = vgg.features
    features[16].ceil_mode = True  # SSD's pool3, as torchvision's SSD patches it
    with torch.no_grad():
        theirs = features[:30](x)[0].permute(1, 2, 0).numpy()
    _agree(mine, theirs, "torchvision VGG16 backbone conv5_3", report)

import math

import numpy as np
import pytest

from keras_scb.anchors import AnchorSpec, anchors_per_map, get_anchor_spec, get_anchors

R2, R3 = math.sqrt(2.0), math.sqrt(3.0)

# Hand-computed (cx, cy, w, h) of the first anchor (small square at location (0, 0))
# and the last anchor (ratio 1/r_max at the last location) of every SSD300 VOC map:
# centre = (i + 0.5) * step / 300, s_k = min_size / 300, values clipped to [0, 1].
SSD300_FIRST_LAST = [
    # (offset, first, last)
    (0, [4 / 300, 4 / 300, 0.1, 0.1], [1.0, 1.0, 0.1 / R2, 0.1 * R2]),
    (5776, [8 / 300, 8 / 300, 0.2, 0.2], [296 / 300, 296 / 300, 0.2 / R3, 0.2 * R3]),
    (7942, [16 / 300, 16 / 300, 0.37, 0.37], [1.0, 1.0, 0.37 / R3, 0.37 * R3]),
    (8542, [32 / 300, 32 / 300, 0.54, 0.54], [0.96, 0.96, 0.54 / R3, 0.54 * R3]),
    (8692, [50 / 300, 50 / 300, 0.71, 0.71], [250 / 300, 250 / 300, 0.71 / R2, 1.0]),
    (8728, [0.5, 0.5, 0.88, 0.88], [0.5, 0.5, 0.88 / R2, 1.0]),
]


@pytest.mark.parametrize(
    "name,count",
    [("ssd300", 8732), ("ssd300_coco", 8732), ("ssd512", 24564), ("ssd512_coco", 24564)],
)
def test_anchor_counts(name, count):
    anchors = get_anchors(name)
    assert anchors.shape == (count, 4)
    assert anchors.dtype == np.float32
    assert get_anchor_spec(name).num_anchors() == count
    assert sum(anchors_per_map(name)) == count


def test_ssd300_first_and_last_anchor_of_each_map():
    anchors = get_anchors("ssd300")
    ends = [offset for offset, _, _ in SSD300_FIRST_LAST[1:]] + [len(anchors)]
    for (offset, first, last), end in zip(SSD300_FIRST_LAST, ends):
        np.testing.assert_allclose(anchors[offset], first, atol=1e-6)
        np.testing.assert_allclose(anchors[end - 1], last, atol=1e-6)


def test_order_within_a_location():
    # Location (0, 0) of the 19x19 map: small, large sqrt(0.2 * 0.37), 2, 1/2, 3, 1/3.
    a = get_anchors("ssd300")[5776:5782]
    big = math.sqrt(0.2 * 111 / 300)
    expected_wh = [
        (0.2, 0.2), (big, big), (0.2 * R2, 0.2 / R2), (0.2 / R2, 0.2 * R2),
        (0.2 * R3, 0.2 / R3), (0.2 / R3, 0.2 * R3),
    ]
    np.testing.assert_allclose(a[:, 2:], expected_wh, atol=1e-6)
    # The next location is one step to the right (x inner), same row.
    nxt = get_anchors("ssd300")[5782]
    np.testing.assert_allclose(nxt[:2], [24 / 300, 8 / 300], atol=1e-6)


def test_coco_and_512_scales():
    coco = get_anchors("ssd300_coco")
    np.testing.assert_allclose(coco[0], [4 / 300, 4 / 300, 0.07, 0.07], atol=1e-6)
    np.testing.assert_allclose(coco[1, 2], math.sqrt(0.07 * 0.15), atol=1e-6)
    ssd512 = get_anchors("ssd512")
    np.testing.assert_allclose(ssd512[0], [4 / 512, 4 / 512, 0.07, 0.07], atol=1e-6)
    # The last map of SSD512 is 1x1 with step 512: its centre is the image centre.
    np.testing.assert_allclose(ssd512[-4, :2], [0.5, 0.5], atol=1e-6)


def test_clip_is_a_spec_field():
    spec = get_anchor_spec("ssd300")
    unclipped = get_anchors(AnchorSpec(**{**spec.__dict__, "clip": False}))
    clipped = get_anchors(spec)
    assert unclipped.max() > 1.0
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    np.testing.assert_allclose(np.clip(unclipped, 0, 1), clipped)


def test_bad_spec_and_name_errors():
    with pytest.raises(ValueError, match="min_sizes"):
        AnchorSpec(300, (38, 19), (30,), None, ((2,), (2,)))
    with pytest.raises(ValueError, match="aspect_ratios must be > 1"):
        AnchorSpec(300, (38,), (30,), None, ((0.5,),))
    with pytest.raises(ValueError, match="Unknown anchor preset 'ssd301'"):
        get_anchors("ssd301")

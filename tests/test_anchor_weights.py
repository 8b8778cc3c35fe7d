"""keras_scb.anchor_weights, the one per-anchor weighting core (no keras-hub needed):
every weighting against the loop reference of tests/reference.py, from random
assignments of any anchor count; and matching.forced_best_anchor against the
SSD authors' sequential loop."""

import numpy as np
import pytest
from keras import ops

import reference
from keras_scb import anchor_weights, losses, matching
from keras_scb.anchor_weights import WEIGHTINGS, anchor_sample_weights


def _assignment(seed, batch=3, num_anchors=257, num_boxes=6):
    rng = np.random.default_rng(seed)
    matched = rng.integers(0, num_boxes, (batch, num_anchors)).astype(np.int32)
    state = rng.choice(3, (batch, num_anchors), p=[0.1, 0.75, 0.15])  # pos, neg, ignore
    state[-1] = 1  # an image without positives
    return matched, state == 0, state == 2


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_anchor_sample_weights_equal_the_loop_reference(weighting, seed):
    matched, positive, ignore = _assignment(seed, num_anchors=[257, 1000][seed])
    got = ops.convert_to_numpy(anchor_sample_weights(
        matched, positive, ignore, alpha=0.5, beta=2.0, weighting=weighting))
    want = reference.anchor_sample_weights(matched, positive, ignore, weighting, 0.5, 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(got[-1][~ignore[-1]] == 1.0) and np.all(got[ignore] == 0.0)


def test_the_ssd_losses_use_this_core():
    # One formula: the SSD losses take their weights from anchor_weights.
    assert losses.positive_anchor_weights.__module__ == "keras_scb.anchor_weights"
    assert losses.WEIGHTINGS is anchor_weights.WEIGHTINGS


def _forced_loop(overlaps, valid):
    """The authors' loop: boxes in order, each takes its best anchor (first of ties)."""
    forced = -np.ones(overlaps.shape[::2], np.int32)
    for b in range(overlaps.shape[0]):
        for g in range(overlaps.shape[1]):
            if valid[b, g]:
                forced[b, int(np.argmax(overlaps[b, g]))] = g
    return forced


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forced_best_anchor_equals_the_sequential_loop(seed):
    rng = np.random.default_rng(seed)
    # Rounded IoUs: ties between anchors and boxes sharing a best anchor are common.
    overlaps = np.round(rng.uniform(0, 1, (2, 7, 40)), 1).astype(np.float32)
    valid = rng.uniform(size=(2, 7)) < 0.8
    got = ops.convert_to_numpy(matching.forced_best_anchor(overlaps, valid, ops))
    np.testing.assert_array_equal(got, _forced_loop(overlaps, valid))

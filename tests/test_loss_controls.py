"""The SCB experiment's control weightings (issue 15): ``uniform_beta`` and
``scb_mean_normalised``, against the float64 loop reference, with an image that has
no positives, under TensorFlow and JAX."""

import json
import os

import numpy as np
import pytest

import reference
from keras_scb.anchors import get_anchors
from keras_scb.losses import (
    WEIGHTINGS,
    MultiBoxLoss,
    ScaleBalancedLoss,
    match_count_per_anchor,
    mean_normalise_per_image,
    scale_balanced_weights,
)
from keras_scb.matching import encode_targets
from test_matching import pad_batch

CONTROLS = ("uniform_beta", "scb_mean_normalised")


def batch_with_empty_image(seed):
    """Three images: objects of mixed sizes, none (all padding), objects again."""
    rng = np.random.default_rng(seed)
    anchors = get_anchors("ssd300")
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
    images = [reference.random_boxes(rng, max_pad=0), empty, reference.random_boxes(rng)]
    while len(images[0][1]) < 2 or len(images[2][1]) < 2:  # two objects: a balance to change
        images = [reference.random_boxes(rng, max_pad=0), empty, reference.random_boxes(rng)]
    boxes, classes = pad_batch(images)
    y_true = encode_targets(boxes, classes, anchors).numpy()
    y_pred = np.concatenate(
        [rng.normal(0, 1.5, (3, len(anchors), 4)), rng.normal(0, 3.0, (3, len(anchors), 21))],
        axis=-1,
    ).astype(np.float32)
    positives = (y_true[..., 4] > 0).sum(axis=1)
    assert positives[1] == 0 and positives[0] > 0 and positives[2] > 0
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("apply_to", ["classification", "both"])
@pytest.mark.parametrize("weighting", CONTROLS)
def test_controls_against_loop_reference(weighting, apply_to, seed):
    y_true, y_pred = batch_with_empty_image(seed)
    got = float(ScaleBalancedLoss(weighting=weighting, apply_to=apply_to, beta=2.5)(y_true, y_pred))
    want = reference.multibox_loss(y_true, y_pred, weighting=weighting, apply_to=apply_to, beta=2.5)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mean_normalised_keeps_multibox_total_and_scb_ratios():
    y_true, _ = batch_with_empty_image(2)
    positive = y_true[..., 4] > 0
    counts = match_count_per_anchor(y_true[..., 5].astype(np.int32), positive)
    scb = np.asarray(scale_balanced_weights(counts, beta=3.0)) * positive
    got = np.asarray(mean_normalise_per_image(scb, positive))
    assert np.all(np.isfinite(got)) and np.all(got[~positive] == 0)
    for b in (0, 2):
        # Total positive weight = number of positive anchors, as MultiBox's ...
        np.testing.assert_allclose(got[b].sum(), positive[b].sum(), rtol=1e-5)
        # ... and the objects keep SCB's relative weights (scb is not itself mean 1).
        assert abs(scb[b][positive[b]].mean() - 1.0) > 0.1
        np.testing.assert_allclose(got[b][positive[b]] / scb[b][positive[b]],
                                   got[b][positive[b]][0] / scb[b][positive[b]][0], rtol=1e-5)


def test_uniform_beta_with_beta_one_is_multibox():
    y_true, y_pred = batch_with_empty_image(3)
    np.testing.assert_allclose(
        float(ScaleBalancedLoss(weighting="uniform_beta", beta=1.0)(y_true, y_pred)),
        float(MultiBoxLoss()(y_true, y_pred)), rtol=1e-6)


def test_train_cli_offers_every_weighting():
    from absl import flags

    import keras_scb.train  # noqa: F401  (defines the flags)

    assert sorted(flags.FLAGS["weighting"].parser.enum_values) == sorted(WEIGHTINGS)


_JAX_SCRIPT = """
import json, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax"
from keras_scb.losses import ScaleBalancedLoss
data = np.load(sys.argv[1] if len(sys.argv) > 1 else {path!r})
print(json.dumps({{w + "/" + a: float(ScaleBalancedLoss(weighting=w, apply_to=a, beta=2.5)(
    data["y_true"], data["y_pred"])) for w in {controls!r} for a in ("classification", "both")}}))
"""


def test_controls_under_jax_match_reference(tmp_path, python_subprocess):
    y_true, y_pred = batch_with_empty_image(0)
    path = os.path.join(tmp_path, "batch.npz")
    np.savez(path, y_true=y_true, y_pred=y_pred)
    out = python_subprocess(_JAX_SCRIPT.format(path=path, controls=CONTROLS),
                            env={"KERAS_BACKEND": "jax"})
    values = json.loads(out.strip().splitlines()[-1])
    assert len(values) == 2 * len(CONTROLS)
    for key, value in values.items():
        weighting, apply_to = key.split("/")
        want = reference.multibox_loss(y_true, y_pred, weighting=weighting, apply_to=apply_to,
                                       beta=2.5)
        np.testing.assert_allclose(value, want, rtol=1e-5, err_msg=key)

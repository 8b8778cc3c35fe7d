"""Calibration of detection scores: reliability bins, expected calibration error
(ECE) and the reliability diagram.

A detection is *correct* when `keras_scb.evaluation.match_detections` labels it a
true positive (class-aware, IoU > 0.5, one per object); detections that hit a
difficult object are left out. Scores are binned into ``num_bins`` equal-width
bins of ``[0, 1]`` (the last bin includes 1); a bin keeps counts and the sum of
its scores, so the bins of several runs (seeds) add up exactly (`merge_bins`).

    ECE = sum_b (n_b / N) * |correct_b / n_b - mean score_b|

over the non-empty bins (Naeini et al. 2015; Guo et al. 2017). A calibrated
detector's detections of score 0.3 are right 30 % of the time.

Numpy only; `plot_reliability_diagram` imports matplotlib (Agg) when called.
"""

import os
from typing import Dict, Optional, Sequence

import numpy as np

from keras_scb.fileio import atomic_output

Bins = Dict[str, list]


def calibration_bins(scores: np.ndarray, correct: np.ndarray, num_bins: int = 10) -> Bins:
    """Bins detections by score.

    Args:
        scores: ``(D,)`` detection scores in ``[0, 1]``.
        correct: ``(D,)`` bool, True for a true positive.
        num_bins: equal-width bins over ``[0, 1]``.

    Returns:
        ``{"edges": (num_bins + 1) floats, "count": ints, "correct": ints,
        "score_sum": floats}``, plain lists (JSON-ready).
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1; got {num_bins}.")
    scores = np.asarray(scores, np.float64).reshape(-1)
    correct = np.asarray(correct, bool).reshape(-1)
    if scores.shape != correct.shape:
        raise ValueError(f"{scores.shape[0]} scores but {correct.shape[0]} correct flags.")
    if scores.size and not (np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1):
        raise ValueError("Scores must be finite and in [0, 1].")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # Bin b holds [edges[b], edges[b+1]); a score of exactly 1 goes to the last bin.
    index = np.minimum(np.floor(scores * num_bins).astype(np.int64), num_bins - 1)
    return {
        "edges": edges.tolist(),
        "count": np.bincount(index, minlength=num_bins).tolist(),
        "correct": np.bincount(index, weights=correct, minlength=num_bins).astype(int).tolist(),
        "score_sum": np.bincount(index, weights=scores, minlength=num_bins).tolist(),
    }


def merge_bins(bins: Sequence[Bins]) -> Bins:
    """Adds up the bins of several runs (same edges)."""
    if not bins:
        raise ValueError("No bins to merge.")
    edges = bins[0]["edges"]
    for other in bins[1:]:
        if not np.allclose(other["edges"], edges):
            raise ValueError("Cannot merge calibration bins with different edges.")
    return {
        "edges": list(edges),
        **{key: np.sum([b[key] for b in bins], axis=0).tolist()
           for key in ("count", "correct", "score_sum")},
    }


def expected_calibration_error(bins: Bins) -> Optional[float]:
    """ECE of `calibration_bins` (module docstring); None without detections."""
    count = np.asarray(bins["count"], np.float64)
    total = count.sum()
    if total == 0:
        return None
    filled = count > 0
    accuracy = np.asarray(bins["correct"], np.float64)[filled] / count[filled]
    confidence = np.asarray(bins["score_sum"], np.float64)[filled] / count[filled]
    return float(np.sum(count[filled] / total * np.abs(accuracy - confidence)))


def plot_reliability_diagram(bins: Bins, path: str, title: str = "") -> str:
    """Writes the reliability diagram of ``bins`` as a PNG (atomically).

    Top: fraction correct against mean score per non-empty bin, with the
    diagonal of perfect calibration and the ECE in the legend. Bottom: detections
    per bin (log scale: low-score bins hold most detections).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    edges = np.asarray(bins["edges"])
    count = np.asarray(bins["count"], np.float64)
    filled = count > 0
    accuracy = np.asarray(bins["correct"], np.float64)[filled] / count[filled]
    confidence = np.asarray(bins["score_sum"], np.float64)[filled] / count[filled]
    ece = expected_calibration_error(bins)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    label = "detections" if ece is None else f"detections (ECE {ece:.3f})"
    top.plot(confidence, accuracy, marker="o", label=label)
    top.set_ylabel("fraction correct (TP at IoU 0.5)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title, fontsize=9)
    bottom.bar(edges[:-1], count, width=np.diff(edges), align="edge", edgecolor="white")
    if filled.any():
        bottom.set_yscale("log")
    bottom.set_xlabel("score")
    bottom.set_ylabel("detections")
    figure.tight_layout()
    with atomic_output(os.fspath(path)) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return path

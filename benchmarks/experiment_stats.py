"""Statistics of the SCB experiment: mean with a Student-t confidence interval,
and the paired difference of two arms (paired by seed and run); and, for the
timing benchmarks, a distribution-free confidence interval of a median.

Pure Python (``math`` only): the t quantile is exact for integer degrees of
freedom, from the closed-form CDF of Student's t (Abramowitz & Stegun 26.7.3 /
26.7.4), inverted by bisection; no SciPy needed.
"""

import math
import statistics
from typing import Dict, Hashable, Mapping, Optional, Sequence


def _t_two_sided_mass(t: float, dof: int) -> float:
    """``P(|T| < t)`` for Student's t with ``dof`` (integer >= 1) degrees of freedom."""
    theta = math.atan(t / math.sqrt(dof))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if dof % 2 == 0:  # sin(theta) * (1 + c^2/2 + 1*3 c^4/(2*4) + ...), dof/2 terms
        term, total = 1.0, 1.0
        for k in range(1, dof // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    # (2/pi) * (theta + sin cos (1 + 2 c^2/3 + 2*4 c^4/(3*5) + ...)), (dof-1)/2 terms
    if dof == 1:
        return 2.0 * theta / math.pi
    term, total = 1.0, 1.0
    for k in range(1, (dof - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2.0 / math.pi * (theta + s * math.sqrt(c2) * total)


def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile (> 0.5) of Student's t with integer ``dof``,
    e.g. ``t_quantile(0.975, 4) = 2.7764``; to 1e-10."""
    if not 0.5 < probability < 1.0:
        raise ValueError(f"probability must be in (0.5, 1); got {probability}.")
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"dof must be a positive integer; got {dof}.")
    mass = 2.0 * probability - 1.0
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, dof) < mass:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if _t_two_sided_mass(mid, dof) < mass:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_interval(values: Sequence[Optional[float]], confidence: float = 0.95) -> Dict[str, object]:
    """Mean and its two-sided Student-t confidence interval (``n - 1`` dof).

    ``None`` values (a metric undefined in a run) are left out.

    Returns:
        ``{"n", "mean", "sd" (sample, n - 1), "half_width", "low", "high"}``;
        with one value the interval fields are None, with none all but ``n``.
    """
    values = [float(v) for v in values if v is not None]
    n = len(values)
    out = {"n": n, "mean": None, "sd": None, "half_width": None, "low": None, "high": None}
    if n == 0:
        return out
    out["mean"] = statistics.fmean(values)
    if n == 1:
        return out
    out["sd"] = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * out["sd"] / math.sqrt(n)
    out.update(half_width=half, low=out["mean"] - half, high=out["mean"] + half)
    return out


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Dict[str, object]:
    """Median and a distribution-free confidence interval for it (order statistics).

    With ``n`` values sorted ``x_(1) <= ... <= x_(n)``, ``[x_(j), x_(n + 1 - j)]``
    covers the population median with probability ``1 - 2 P(Bin(n, 1/2) < j)``;
    ``j`` is the largest rank whose coverage is at least ``confidence``. No
    assumption on the distribution (timings are skewed by stragglers), only that the
    values are independent. Fewer than 6 values cannot reach 95 %: the interval
    fields are then None.

    Returns:
        ``{"n", "median", "low", "high", "coverage"}`` (coverage: the interval's
        exact probability, >= ``confidence``).
    """
    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    out = {"n": n, "median": statistics.median(ordered) if n else None,
           "low": None, "high": None, "coverage": None}
    below = 0.0  # P(Bin(n, 1/2) < j), j = 1, 2, ...
    for j in range(1, n // 2 + 1):
        below += math.comb(n, j - 1) / 2.0**n
        coverage = 1.0 - 2.0 * below
        if coverage < confidence:
            break
        out.update(low=ordered[j - 1], high=ordered[n - j], coverage=coverage)
    return out


def paired_difference(
    arm: Mapping[Hashable, Optional[float]],
    baseline: Mapping[Hashable, Optional[float]],
    confidence: float = 0.95,
) -> Dict[str, object]:
    """`mean_interval` of ``arm[k] - baseline[k]`` over the keys (seed, run) both
    have with defined values; ``"pairs"`` lists those keys."""
    keys = [k for k in arm if k in baseline and arm[k] is not None and baseline[k] is not None]
    result = mean_interval([arm[k] - baseline[k] for k in keys], confidence)
    result["pairs"] = keys
    return result


def format_interval(stats: Mapping[str, object], scale: float = 100.0, digits: int = 1) -> str:
    """``"74.2 [69.8, 78.6]"``; ``"74.2"`` for one run, ``"n/a"`` for none
    (values times ``scale``: percent by default)."""
    if stats["mean"] is None:
        return "n/a"
    text = f"{scale * stats['mean']:.{digits}f}"
    if stats["half_width"] is None:
        return text
    return f"{text} [{scale * stats['low']:.{digits}f}, {scale * stats['high']:.{digits}f}]"


def format_median_interval(stats: Mapping[str, object], digits: int = 3) -> str:
    """``"1.003 [0.998, 1.008]"`` from `median_interval`; the median alone when the
    values are too few for an interval."""
    text = f"{stats['median']:.{digits}f}"
    if stats["low"] is None:
        return text
    return f"{text} [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}]"

"""Binary classification metrics and bootstrap intervals on numpy arrays (no scikit-learn at runtime).

The definitions follow scikit-learn's so that scores can be checked against it: precision, recall and F1 use
`zero_division=0`, balanced accuracy averages the recall of the classes present in `y_true`, and the ROC AUC is
the Mann-Whitney statistic with ties given average ranks (what `roc_auc_score` computes by the trapezoid rule).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

# Bootstrap resamples are drawn this many indices at a time, so memory stays bounded for 100k+ values.
_BOOTSTRAP_CHUNK = 4_000_000


def _as_bool(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array.astype(bool)


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, or 0 when the denominator is 0 (scikit-learn's zero_division=0)."""
    return numerator / denominator if denominator else 0.0


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """Balanced accuracy, F1, precision, recall and accuracy of boolean predictions.

    Degenerate inputs match scikit-learn with `zero_division=0`: no predicted positives gives precision 0, no
    actual positives gives recall 0, and F1 is 0 when there are no true positives. Balanced accuracy is the mean
    recall over the classes present in `y_true`, so with a single class it is that class's recall (scikit-learn
    warns and does the same). Every metric is NaN for empty input, the only case where none is defined.
    """
    truth, pred = _as_bool(y_true, "y_true"), _as_bool(y_pred, "y_pred")
    if truth.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {truth.shape[0]} vs {pred.shape[0]}")
    n = truth.shape[0]
    if n == 0:
        return dict.fromkeys(("balanced_accuracy", "f1", "precision", "recall", "accuracy"), math.nan)
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(~truth & pred))
    fn = int(np.count_nonzero(truth & ~pred))
    tn = n - tp - fp - fn
    positives, negatives = tp + fn, tn + fp
    recalls = ([tp / positives] if positives else []) + ([tn / negatives] if negatives else [])
    return {
        "balanced_accuracy": float(np.mean(recalls)),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, positives),
        "accuracy": (tp + tn) / n,
    }


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve of `scores` for telling `y_true` apart, ties counted as half.

    NaN when only one class is present (scikit-learn raises there) or when any score is NaN.
    """
    truth = _as_bool(y_true, "y_true")
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != truth.shape:
        raise ValueError(f"y_true and scores differ in shape: {truth.shape} vs {values.shape}")
    positives = int(np.count_nonzero(truth))
    negatives = truth.shape[0] - positives
    if positives == 0 or negatives == 0 or np.isnan(values).any():
        return math.nan
    ranks = rankdata(values)  # average ranks for ties
    u = ranks[truth].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def pearson(x, y) -> float:
    """Pearson's correlation of two equally long sequences; NaN where it is undefined (fewer than two values, or
    either one constant)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pearson needs two one-dimensional sequences of one length, got {a.shape} and {b.shape}")
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / math.sqrt((a @ a) * (b @ b)))


def bootstrap_mean_ci(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """The mean of `values` (NaNs ignored) and a percentile bootstrap interval for it at `level`.

    All three are NaN when every value is NaN (or there are none); a single value gives a zero-width interval.
    The same seed gives the same interval.
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[~np.isnan(array)]
    n = array.shape[0]
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(array.mean())
    if n == 1 or n_boot <= 0:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, _BOOTSTRAP_CHUNK // n)
    for lo in range(0, n_boot, chunk):
        hi = min(lo + chunk, n_boot)
        means[lo:hi] = array[rng.integers(0, n, size=(hi - lo, n))].mean(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


# The main number of each scorer, for summaries and comparisons: the LLM scorers' hard answers by balanced
# accuracy, the scorers that rank windows by a continuous score by its AUC; the intruder's and intervention's
# picks by their accuracy (chance 1 / (k + 1) and 1/2), simulation by its correlation (chance 0). Each scores row
# holds its metric's chance in `chance`.
PRIMARY_METRIC = {"detection": "balanced_accuracy", "fuzzing": "balanced_accuracy", "embedding": "auc",
                  "surprisal": "auc", "intruder": "accuracy", "simulation": "correlation", "intervention": "accuracy"}
# Every metric a summary averages: the primary ones and F1.
SUMMARY_METRICS = ("balanced_accuracy", "f1", "auc", "accuracy", "correlation")


def versus_baseline(row: dict) -> str:
    """A summary row's LLM-minus-token-baseline difference (its `minus_tokens` columns) in words: the mean with
    its 95% interval and whether the LLM beats the baseline (interval above 0), loses to it (below 0), or
    neither; "–" where the row has none."""
    if row.get("minus_tokens") is None:
        return "–"
    mean, lo, hi = row["minus_tokens"], row["minus_tokens_lo"], row["minus_tokens_hi"]
    verdict = "LLM better" if lo > 0 else "baseline better" if hi < 0 else "no clear difference"
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict}"

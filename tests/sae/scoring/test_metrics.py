"""The metrics agree with scikit-learn, degenerate inputs included, and the bootstrap behaves."""

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from sae.scoring.metrics import bootstrap_mean_ci, classification_metrics, roc_auc


def sklearn_metrics(y_true, y_pred) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balanced accuracy warns when y_true has one class
        return {
            "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
            "f1": skm.f1_score(y_true, y_pred, zero_division=0),
            "precision": skm.precision_score(y_true, y_pred, zero_division=0),
            "recall": skm.recall_score(y_true, y_pred, zero_division=0),
            "accuracy": skm.accuracy_score(y_true, y_pred),
        }


def random_cases(seed: int = 0, count: int = 300):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, 40))
        p_true, p_pred = rng.choice([0.0, 0.05, 0.3, 0.5, 0.9, 1.0], size=2)
        yield rng.random(n) < p_true, rng.random(n) < p_pred


DEGENERATE = [
    ([True, True], [True, True]),
    ([False, False], [False, False]),
    ([True, True], [False, False]),
    ([False, False], [True, True]),
    ([True, False], [False, False]),
    ([True, False], [True, True]),
    ([False, False, True], [True, False, False]),
    ([True], [False]),
]


@pytest.mark.parametrize("y_true, y_pred", DEGENERATE)
def test_degenerate_cases_match_sklearn(y_true, y_pred):
    assert classification_metrics(y_true, y_pred) == pytest.approx(sklearn_metrics(y_true, y_pred))


def test_random_cases_match_sklearn():
    for y_true, y_pred in random_cases():
        assert classification_metrics(y_true, y_pred) == pytest.approx(sklearn_metrics(y_true, y_pred))


def test_empty_input_is_nan_and_mismatched_lengths_raise():
    assert all(math.isnan(v) for v in classification_metrics([], []).values())
    with pytest.raises(ValueError):
        classification_metrics([True], [True, False])


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(2, 60))
        y_true = rng.random(n) < rng.uniform(0.1, 0.9)
        if y_true.all() or not y_true.any():
            y_true[0] = not y_true[0]
        # Few distinct values: many ties, within and across classes.
        scores = rng.integers(0, int(rng.integers(1, 6)), n) if rng.random() < 0.5 else rng.normal(size=n)
        scores = scores + y_true * rng.uniform(0, 1)
        assert roc_auc(y_true, scores) == pytest.approx(skm.roc_auc_score(y_true, scores), abs=1e-12)


def test_roc_auc_edge_cases():
    assert roc_auc([True, False], [1.0, 0.0]) == 1.0
    assert roc_auc([True, False], [0.0, 1.0]) == 0.0
    assert roc_auc([True, False, True, False], [2.0, 2.0, 2.0, 2.0]) == 0.5
    assert math.isnan(roc_auc([True, True], [0.1, 0.2]))
    assert math.isnan(roc_auc([], []))
    assert math.isnan(roc_auc([True, False], [np.nan, 0.2]))


def test_bootstrap_contains_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(2)
    widths = []
    for n in (30, 300, 3000):
        values = rng.normal(0.7, 0.2, n)
        mean, lo, hi = bootstrap_mean_ci(values)
        assert mean == pytest.approx(values.mean())
        assert lo < mean < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # The width of a 95% interval is about 2 * 1.96 standard errors.
    assert widths[2] == pytest.approx(2 * 1.96 * 0.2 / np.sqrt(3000), rel=0.15)


def test_bootstrap_ignores_nans_and_is_deterministic():
    values = np.array([0.1, np.nan, 0.5, 0.9, np.nan, 0.4, 0.7])
    first = bootstrap_mean_ci(values, seed=3)
    assert first == bootstrap_mean_ci(values, seed=3)
    assert first != bootstrap_mean_ci(values, seed=4)
    assert first[0] == pytest.approx(np.nanmean(values))
    assert all(np.isfinite(first))
    assert bootstrap_mean_ci([0.25]) == (0.25, 0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([np.nan, np.nan]))
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))


def test_bootstrap_level_widens_the_interval():
    values = np.random.default_rng(5).random(200)
    _, lo90, hi90 = bootstrap_mean_ci(values, level=0.9)
    _, lo99, hi99 = bootstrap_mean_ci(values, level=0.99)
    assert lo99 < lo90 and hi90 < hi99


def test_every_scorer_has_a_primary_metric_of_the_scores_table():
    from sae.config import SCORERS
    from sae.scoring.metrics import PRIMARY_METRIC
    from sae.scoring.scorers import SCHEMA

    assert set(PRIMARY_METRIC) == set(SCORERS)
    assert set(PRIMARY_METRIC.values()) <= set(SCHEMA.names)

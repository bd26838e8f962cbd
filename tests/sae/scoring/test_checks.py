"""The scores check on real Parquet of the scores schema: control rows (another latent's explanation) must
score near chance, by a bootstrap interval with many latents and by a tolerance with few."""

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sae.scoring.checks import controls_near_chance
from sae.scoring.scorers import SCHEMA


def scores(scorer: str, source: str, balanced_accuracy, auc=None, explainer: str = "llm") -> pa.Table:
    n = len(balanced_accuracy)
    auc = [None] * n if auc is None else list(auc)
    return pa.table({
        "latent": list(range(n)), "explainer": [explainer] * n, "scorer": [scorer] * n, "source": [source] * n,
        "explanation_latent": [(i + 1) % n for i in range(n)], "balanced_accuracy": list(balanced_accuracy),
        "f1": [0.5] * n, "precision": [0.5] * n, "recall": [0.5] * n, "accuracy": [0.5] * n, "auc": auc,
        "bin_accuracy": [[0.5, 0.5]] * n, "silent_accuracy": [0.5] * n, "n_examples": [20] * n,
        "n_activating": [10] * n, "n_failures": [0] * n, "failed_answers": [[]] * n,
        "scorer_model": ["smollm2-135m-instruct"] * n, "prompt_version": ["v1"] * n,
        "created_at": [datetime.now(timezone.utc)] * n, "chance": [0.5] * n,
        **{name: [None] * n for name in ("correlation", "correlation_activating", "strength_accuracy", "n_requests",
                                         "prompt_tokens", "completion_tokens")},
    }, schema=SCHEMA)


def near(mean: float, n: int, seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(mean, 0.08, n), 0, 1)


def write(tmp_path, *tables) -> list:
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.concat_tables(tables), path)
    return [path]


def test_controls_at_chance_pass_while_real_scores_are_ignored(tmp_path):
    files = write(tmp_path,
                  scores("detection", "real", near(0.9, 40, 0)),  # good real scores are no concern here
                  scores("detection", "control", near(0.5, 40, 1)),
                  scores("embedding", "control", near(0.5, 40, 2), auc=near(0.5, 40, 3)),
                  scores("fuzzing", "control", [0.6, 0.4, 0.62]))  # few latents: the tolerance rule
    outcome = controls_near_chance(files)
    assert outcome.passed, outcome.description
    by = outcome.metadata["scorers"]
    assert set(by) == {"detection", "embedding", "fuzzing"} and set(by["embedding"]) == {"balanced_accuracy", "auc"}
    assert "auc" not in by["detection"]  # no probabilities: AUC null, not checked
    detection = by["detection"]["balanced_accuracy"]
    assert detection["n"] == 40 and detection["rule"] == "interval"
    assert detection["interval"][0] <= 0.5 <= detection["interval"][1]
    assert by["fuzzing"]["balanced_accuracy"]["rule"] == "tolerance"


def test_a_control_off_chance_fails_and_is_named(tmp_path):
    files = write(tmp_path,
                  scores("detection", "control", near(0.5, 40, 1)),
                  scores("embedding", "control", near(0.5, 40, 2), auc=near(0.65, 40, 3)),  # the AUC is off
                  scores("fuzzing", "control", [0.9, 0.8, 0.85]))  # few latents, but far from chance
    outcome = controls_near_chance(files)
    assert not outcome.passed and outcome.severity == "warn"
    by = outcome.metadata["scorers"]
    assert by["detection"]["balanced_accuracy"]["passed"]
    auc = by["embedding"]["auc"]
    assert not auc["passed"] and auc["interval"][0] > 0.5 and 0.6 < auc["mean"] < 0.7
    assert not by["fuzzing"]["balanced_accuracy"]["passed"]
    assert "embedding auc" in outcome.description and "fuzzing balanced_accuracy" in outcome.description
    assert "detection" not in outcome.description


def test_each_explainers_controls_are_checked_apart(tmp_path):
    files = write(tmp_path, scores("detection", "control", near(0.5, 40, 1)),
                  scores("detection", "control", near(0.8, 40, 2), explainer="tokens"))
    outcome = controls_near_chance(files)
    by = outcome.metadata["scorers"]
    assert by["detection"]["balanced_accuracy"]["passed"]
    assert not by["detection (tokens)"]["balanced_accuracy"]["passed"]
    assert not outcome.passed and "detection (tokens) balanced_accuracy" in outcome.description


def test_a_small_significant_bias_is_not_flagged():
    # 2,000 latents make a 0.51 mean significant; it is within min_effect of chance, so it passes.
    table = scores("detection", "control", np.full(2000, 0.51) + np.random.default_rng(0).normal(0, 0.01, 2000))
    outcome = controls_near_chance(table)
    verdict = outcome.metadata["scorers"]["detection"]["balanced_accuracy"]
    assert verdict["interval"][0] > 0.5 and outcome.passed
    assert not controls_near_chance(table, min_effect=0.0).passed


def test_a_scorer_is_checked_against_its_own_chance_level(tmp_path):
    """The intruder's control accuracy sits at 1 / (k + 1), not 0.5: near it passes, at 0.5 it is off."""
    def intruder(mean: float) -> pa.Table:
        table = scores("intruder", "control", [None] * 12, explainer="none")
        table = table.set_column(table.schema.get_field_index("accuracy"), "accuracy",
                                 pa.array(near(mean, 12, 3), pa.float32()))
        return table.set_column(table.schema.get_field_index("chance"), "chance", pa.array([0.2] * 12, pa.float32()))

    passing = controls_near_chance(write(tmp_path, intruder(0.2)))
    assert passing.passed and passing.metadata["scorers"]["intruder (none)"]["accuracy"]["chance"] == 0.2
    (tmp_path / "part-00000.parquet").unlink()
    failing = controls_near_chance(write(tmp_path, intruder(0.5)))
    assert not failing.passed
    assert "intruder (none) accuracy" in failing.description and "chance 0.200" in failing.description

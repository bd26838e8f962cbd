"""Data checks of a committed scores partition.

`controls_near_chance`: a control row scores a latent with another latent's explanation, so a scorer that
measures the explanation gives it chance (0.5 balanced accuracy and AUC) on average; for the scorers whose
primary metric is another one (the intruder's and intervention's accuracy, simulation's correlation), the chance
level is the rows' `chance` (1 / (k + 1), 0.5, 0). The rule, per scorer and metric, over the control values of its
latents:

- with at least `min_latents` latents, the percentile bootstrap 95% interval of the mean must contain chance;
  a mean within `min_effect` of chance also passes, so a bias too small to matter is not flagged just because
  many latents make it significant;
- with fewer latents the bootstrap interval is unreliable (it undercovers: a handful of values cannot show
  the spread of their mean), so the mean must instead lie within `tolerance` of chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa

from ..checks import WARN, CheckOutcome
from ..explanations.explainer import LLM
from ..lake.sql import query_over
from .metrics import PRIMARY_METRIC, bootstrap_mean_ci

CHANCE = 0.5
METRICS = ("balanced_accuracy", "auc")


def _verdict(values, chance: float, tolerance: float, min_latents: int, min_effect: float, level: float,
             seed: int) -> dict:
    mean, low, high = bootstrap_mean_ci(values, level=level, seed=seed)
    n = len(values)
    if n >= min_latents:
        rule = "interval"
        passed = low <= chance <= high or abs(mean - chance) <= min_effect
    else:
        rule = "tolerance"
        passed = abs(mean - chance) <= tolerance
    return {"mean": round(mean, 4), "interval": [round(low, 4), round(high, 4)], "n": n, "rule": rule,
            "chance": round(chance, 4), "passed": passed}


def controls_near_chance(scores: pa.Table | pl.DataFrame | Sequence[Path], tolerance: float = 0.15,
                         min_latents: int = 10, min_effect: float = 0.02, level: float = 0.95,
                         seed: int = 0) -> CheckOutcome:
    """WARN when a scorer's control scores (another latent's explanation) are off chance; see the module's rule.

    `scores` is the partition's table (schema `sae.scoring.scorers.SCHEMA`) or its Parquet files. AUC is
    checked where the scorer gave probabilities (non-null values). Each explainer's controls are checked apart;
    in the metadata and messages a scorer of another explainer than the LLM is named `scorer (explainer)`."""
    controls = query_over("score_control_values", scores, "scores")
    per_scorer, off = {}, []
    for (explainer, name), rows in controls.partition_by(["explainer", "scorer"], as_dict=True).items():
        scorer = name if explainer == LLM else f"{name} ({explainer})"
        primary = PRIMARY_METRIC[name]
        chances = {metric: CHANCE for metric in METRICS}
        if primary not in METRICS:
            chances[primary] = float(rows["chance"].drop_nulls().mean())
        for metric, chance in chances.items():
            values = rows[metric].drop_nulls().drop_nans().to_numpy()
            if values.size == 0:
                continue
            verdict = _verdict(values, chance, tolerance, min_latents, min_effect, level, seed)
            per_scorer.setdefault(scorer, {})[metric] = verdict
            if not verdict["passed"]:
                low, high = verdict["interval"]
                off.append(f"{scorer} {metric} {verdict['mean']:.3f} [{low:.3f}, {high:.3f}] over {verdict['n']} "
                           f"latents (chance {chance:.3f})")
    meta = {"scorers": per_scorer, "tolerance": tolerance, "min_latents": min_latents, "min_effect": min_effect,
            "level": level}
    if not per_scorer:
        return CheckOutcome("controls_near_chance", True, WARN,
                            "no control scores to check (score.control is off, or fewer than two latents)", meta)
    if not off:
        checked = ", ".join(f"{s} {m} {v['mean']:.3f}" for s, by in per_scorer.items() for m, v in by.items())
        return CheckOutcome("controls_near_chance", True, WARN, f"control scores are near chance: {checked}", meta)
    return CheckOutcome(
        "controls_near_chance", False, WARN,
        f"control scores are off chance for {'; '.join(off)}: these scorers respond to something other than "
        "the explanation (e.g. window length or position bias); do not read their real scores as explanation "
        "quality", meta)

"""Scorer calibration on planted latents: does a scorer score a latent's true explanation above a wrong one?

Per (scorer, scorer model), over the planted latents (each averaged over its layers first: it fires on the same
tokens at every layer), the scorer's primary metric (PRIMARY_METRIC) as a mean with a 95% bootstrap interval for
  true       the ground-truth explanation (explainer `truth`, source real),
  explainer  the LLM's explanation (explainer `llm`, source real),
  baseline   the token baseline's (explainer `tokens`, source real),
  wrong      another planted latent's ground truth (explainer `truth`, source control).
A scorer that reads no explanation (config.EXPLANATION_FREE_SCORERS: the intruder) has no explainer or baseline
figure: its true one is the real task on the planted latents, its wrong one the control task.
`calibrated` is true only where the true interval lies wholly above the wrong one (true_lo > wrong_hi), false
where they overlap or true lies below, and NULL where either is undefined (no planted latent scored, or no
controls): not shown to work, which is shown as "unchecked". A scorer that steers with the decoder
(config.DECODER_SCORERS: intervention) cannot score planted latents, which have none: `applicable` is false, its
verdict "not applicable", and nothing calibrates its numbers.
"""

from __future__ import annotations

import math

import pyarrow as pa

from ..config import DECODER_SCORERS, EXPLANATION_FREE_SCORERS, NO_EXPLAINER
from ..explanations.explainer import LLM, TOKENS, TRUTH
from .metrics import PRIMARY_METRIC, bootstrap_mean_ci

CATEGORIES = (("true", TRUTH, "real"), ("explainer", LLM, "real"), ("baseline", TOKENS, "real"),
              ("wrong", TRUTH, "control"))
EXPLANATION_FREE = {"true": (NO_EXPLAINER, "real"), "wrong": (NO_EXPLAINER, "control")}
SCHEMA = pa.schema([
    ("scorer", pa.string()), ("scorer_model", pa.string()),
    ("metric", pa.string()),  # the scorer's primary metric
    ("n_latents", pa.int32()),  # planted latents scored with their true explanation
    *[(f"{name}{suffix}", pa.float64()) for name, _, _ in CATEGORIES for suffix in ("", "_lo", "_hi")],
    ("calibrated", pa.bool_()),
    ("applicable", pa.bool_()),  # false: the scorer cannot score planted latents (it steers with a decoder)
])
# Fewer planted latents than this give a bootstrap interval over a handful of values, narrow by accident: the
# verdict stays unchecked rather than claim a calibration that three numbers cannot show.
MIN_CALIBRATION_LATENTS = 5
UNCALIBRATED_ADVICE = ("its scores with the true explanation do not beat a wrong one; do not read its numbers as "
                       "meaningful")
UNCALIBRATED_TASK_ADVICE = ("it finds the odd window out of planted latents no more often than in the control task, "
                            "where no window is odd; do not read its numbers as meaningful")
NOT_APPLICABLE_ADVICE = ("it steers the model with each latent's decoder direction, and planted latents have none, "
                         "so nothing calibrates it on known answers; read it beside its control (a wrong explanation)")
UNCHECKED_ADVICE = (f"fewer than {MIN_CALIBRATION_LATENTS} planted latents have a readable score with both their true "
                    "and a wrong explanation (no variant with `planted: {}` in the config's saes, `score.control` "
                    "off, planted latents without test windows, or answers that could not be read), so nothing "
                    "shows its numbers mean anything")


def _null(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def calibrate(groups: list[dict], n_boot: int, seed: int) -> pa.Table:
    """The calibration table from sql/calibration_values.sql's rows: one row per (scorer, scorer_model)."""
    by_judge: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
    for group in groups:
        by_judge.setdefault((group["scorer"], group["scorer_model"]), {})[(group["explainer"], group["source"])] = group
    rows = []
    for (scorer, model), found in sorted(by_judge.items()):
        metric = PRIMARY_METRIC[scorer]
        row = {"scorer": scorer, "scorer_model": model, "metric": metric}
        for name, explainer, source in CATEGORIES:
            if scorer in EXPLANATION_FREE_SCORERS:
                explainer, source = EXPLANATION_FREE.get(name, (None, None))
            values = [math.nan if v is None else v for v in found.get((explainer, source), {}).get(metric, [])]
            if name == "true":
                row["n_latents"] = sum(not math.isnan(v) for v in values)
            mean, lo, hi = bootstrap_mean_ci(values, n_boot=n_boot, seed=seed)
            row.update({name: _null(mean), f"{name}_lo": _null(lo), f"{name}_hi": _null(hi)})
        defined = (row["true_lo"] is not None and row["wrong_hi"] is not None
                   and row["n_latents"] >= MIN_CALIBRATION_LATENTS)
        row["calibrated"] = row["true_lo"] > row["wrong_hi"] if defined else None
        row["applicable"] = scorer not in DECODER_SCORERS
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def verdict(calibrated: bool | None, applicable: bool = True) -> str:
    if not applicable:
        return "not applicable"
    return {True: "calibrated", False: "UNCALIBRATED", None: "unchecked"}[calibrated]


def _interval(row: dict, name: str) -> str:
    if row[name] is None:
        return "–"
    return f"{row[name]:.3f} [{row[f'{name}_lo']:.3f}, {row[f'{name}_hi']:.3f}]"


def calibration_line(row: dict) -> str:
    """One line per scorer, as the summary, the CLI and the export card say it."""
    head = f"{row['scorer']} ({row['scorer_model']}): {verdict(row['calibrated'], row['applicable'])}"
    true, wrong = (("on the real task", "on the control task") if row["scorer"] in EXPLANATION_FREE_SCORERS
                   else ("with the true explanation", "a wrong one"))
    figures = (f"{row['metric']} {true} {_interval(row, 'true')} vs {wrong} {_interval(row, 'wrong')}, over "
               f"{row['n_latents']} planted latents")
    if not row["applicable"]:
        return f"{head} — {NOT_APPLICABLE_ADVICE}"
    if row["calibrated"] is None:
        return f"{head} — {UNCHECKED_ADVICE}"
    if not row["calibrated"]:
        advice = UNCALIBRATED_TASK_ADVICE if row["scorer"] in EXPLANATION_FREE_SCORERS else UNCALIBRATED_ADVICE
        return f"{head} — {advice} ({figures})"
    return f"{head} — {figures}"


def calibration_rows(table: pa.Table) -> list[dict]:
    """The calibration for display: each figure with its interval."""
    return [{"scorer": r["scorer"], "scorer_model": r["scorer_model"], "metric": r["metric"],
             "planted_latents": r["n_latents"], **{name: _interval(r, name) for name, _, _ in CATEGORIES},
             "verdict": verdict(r["calibrated"], r["applicable"])} for r in table.to_pylist()]


def calibration_lines(table: pa.Table | None) -> list[str]:
    """A line per scorer, or one saying there is no calibration yet."""
    if table is None or table.num_rows == 0:
        return ["scorer calibration: not computed for this config yet (`saelake run` computes it)"]
    return [calibration_line(row) for row in table.to_pylist()]

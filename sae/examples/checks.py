"""Data checks of a committed examples partition: held-out windows were never shown to the explainer, and
silent windows are silent. Both are errors: wrong examples make every score computed from them meaningless.

Import the module, not the functions, in tests: pytest would collect a function named `test_*`."""

from __future__ import annotations

from pathlib import Path

import duckdb

from ..checks import ERROR, CheckOutcome
from ..lake.sql import run_query


def train_test_disjoint(examples_files: list[Path], n_shown: int = 5) -> CheckOutcome:
    """No test window of a latent shares a (ctx_id, token position) with any of its train windows."""
    name = "train_test_disjoint"
    if not examples_files:
        return CheckOutcome(name, True, ERROR, "no examples in this partition: nothing to check",
                            {"n_windows": 0, "n_latents": 0, "n_overlapping": 0})
    with duckdb.connect() as con:
        files = [str(f) for f in examples_files]
        n_windows, n_latents, n_overlapping, shown = run_query(
            con, "check_examples_disjoint", files=files, n_shown=n_shown).fetchall()[0]
    metadata = {"n_windows": n_windows, "n_latents": n_latents, "n_overlapping": n_overlapping, "shown": shown}
    if n_overlapping:
        return CheckOutcome(name, False, ERROR, (
            f"{n_overlapping} pairs of a train and a test window of the same latent share tokens (of {n_windows} "
            f"windows of {n_latents} latents): the explainer has read held-out text. Rebuild the examples "
            "partition with the current selection (sql/examples_*.sql keeps the splits apart)."), metadata)
    return CheckOutcome(name, True, ERROR, f"{n_windows} windows of {n_latents} latents checked: no test window "
                        "shares a token with a train window of its latent", metadata)


def silent_windows_silent(examples_files: list[Path], latents_files: list[Path], n_shown: int = 5) -> CheckOutcome:
    """Every random and neighbour window (either split) has zero activation of its latent at every token,
    by the latents table itself (not the examples' own `acts` column, which selection derived from it)."""
    name = "silent_windows_silent"
    if not examples_files:
        return CheckOutcome(name, True, ERROR, "no examples in this partition: nothing to check",
                            {"n_windows": 0, "n_active": 0})
    if not latents_files:
        raise FileNotFoundError("no latents files to check the silent windows against: materialize `latents` "
                                "for this partition first")
    with duckdb.connect() as con:
        n_windows, n_active, shown = run_query(
            con, "check_silent_windows", examples=[str(f) for f in examples_files],
            latents=[str(f) for f in latents_files], n_shown=n_shown).fetchall()[0]
    metadata = {"n_windows": n_windows, "n_active": n_active, "shown": shown}
    if n_active:
        return CheckOutcome(name, False, ERROR, (
            f"{n_active} of {n_windows} random/neighbour windows hold a non-zero activation of their latent: "
            "scoring would count them as non-activating. Rebuild the examples partition from the current "
            "latents partition."), metadata)
    return CheckOutcome(name, True, ERROR, f"{n_windows} random/neighbour windows checked: their latent is zero "
                        "at every token", metadata)

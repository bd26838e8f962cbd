"""Data checks of a committed explanations partition."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa

from ..checks import WARN, CheckOutcome
from ..config import PlantedFamily
from ..lake.sql import query_over

# On planted latents an explainer that works names the family's own word; below this share of its explanations
# its explanations of real latents are not to be trusted either (issue 13 asked for 80 % of the LLM's).
MIN_NAMING_RATE = 0.8


def parse_failure_rate(explanations: pa.Table | pl.DataFrame | Sequence[Path], max_rate: float = 0.2) -> CheckOutcome:
    """WARN when more than `max_rate` of the explained latents got an answer without an `Explanation:` line.

    `explanations` is the partition's table (schema `sae.explanations.explainer.SCHEMA`) or its Parquet files.
    The metadata also counts the distinct parsed texts (case and surrounding space ignored): far fewer texts than
    latents means the explainer copies one answer, e.g. a small model repeating its worked example."""
    counts = query_over("explanation_parse_failures", explanations, "explanations").row(0, named=True)
    latents, unparsed = counts["latents"], counts["unparsed"]
    rate = unparsed / latents if latents else 0.0
    meta = {"latents": latents, "unparsed": unparsed, "rate": round(rate, 4), "max_rate": max_rate,
            "distinct_texts": counts["distinct_texts"], "most_common_text": counts["most_common_text"],
            "most_common_count": counts["most_common_count"]}
    texts = f"{counts['distinct_texts']} distinct texts among the {latents - unparsed} parsed"
    if rate <= max_rate:
        return CheckOutcome("parse_failure_rate", True, WARN,
                            f"{unparsed} of {latents} answers had no explanation ({rate:.0%}); {texts}", meta)
    return CheckOutcome(
        "parse_failure_rate", False, WARN,
        f"{unparsed} of {latents} answers had no `Explanation:` line ({rate:.0%}, over {max_rate:.0%}); {texts}. "
        "Read the `completion` column: raise explain.max_tokens if answers are cut off, or use a larger explainer",
        meta)


def names_a_word(text: str | None, words: Sequence[str]) -> bool:
    """Whether `text` holds one of `words` as a whole word, any case; punctuation counts only quoted (`"("`), as
    any text may hold a bracket of its own."""
    if not text:
        return False
    patterns = [rf"(?<![0-9a-z]){re.escape(word)}(?![0-9a-z])" if any(c.isalnum() for c in word)
                else rf"[\"'‘“]{re.escape(word)}[\"'’”]" for word in words]
    return any(re.search(pattern, text, re.IGNORECASE) for pattern in patterns)


def planted_naming(explanations: pa.Table, families: Sequence[PlantedFamily]) -> dict[str, tuple[int, int]]:
    """Per explainer (other than the truth itself): how many of its explanations of planted latents name a word
    of their family, out of how many it explained. Latent i is family i (sae/saes/planted.py)."""
    counts: dict[str, list[int]] = {}
    for row in explanations.select(["latent", "explainer", "explanation"]).to_pylist():
        if row["explainer"] == "truth" or row["latent"] >= len(families):
            continue
        named, total = counts.setdefault(row["explainer"], [0, 0])
        counts[row["explainer"]] = [named + names_a_word(row["explanation"], families[row["latent"]].words), total + 1]
    return {explainer: (named, total) for explainer, (named, total) in sorted(counts.items())}


def names_planted_words(explanations: pa.Table, families: Sequence[PlantedFamily] | None,
                        min_rate: float = MIN_NAMING_RATE) -> CheckOutcome:
    """WARN when an explainer names its planted latent's word in fewer than `min_rate` of its explanations: it
    cannot say what a latent fires on even where the answer is known. Passes (with nothing checked) on a variant
    that is not planted."""
    if families is None:
        return CheckOutcome("names_planted_words", True, WARN, "not a planted variant: nothing to check")
    naming = planted_naming(explanations, families)
    meta = {f"{explainer}_named": named for explainer, (named, _) in naming.items()}
    meta |= {f"{explainer}_explained": total for explainer, (_, total) in naming.items()} | {"min_rate": min_rate}
    failing = [explainer for explainer, (named, total) in naming.items() if total and named / total < min_rate]
    said = "; ".join(f"{explainer}: {named} of {total}" for explainer, (named, total) in naming.items())
    if not failing:
        return CheckOutcome("names_planted_words", True, WARN,
                            f"explanations of planted latents that name the family's word: {said}", meta)
    return CheckOutcome(
        "names_planted_words", False, WARN,
        f"explanations of planted latents that name the family's word: {said}; {', '.join(failing)} under "
        f"{min_rate:.0%}: that explainer's texts do not say what a latent fires on even where it is known. Read "
        "them (`saelake sql \"SELECT latent, explainer, explanation FROM explanations WHERE sae = 'planted'\"`) "
        "and use a larger explainer or show more evidence (explain.prompt.frequent_tokens)", meta)

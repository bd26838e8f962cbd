"""Data checks of a committed explanations partition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa

from ..checks import WARN, CheckOutcome
from ..lake.sql import query_over


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

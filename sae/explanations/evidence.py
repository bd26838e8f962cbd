"""What a latent does, beyond its excerpts: the tokens it fires on most often over the whole corpus, and the
tokens it promotes (`latent_logits`). The LLM explainer's prompt shows a few of each; the token baseline
builds its explanation from them.

The frequent tokens are counted over every firing of the latent (sql/latent_top_tokens.sql joins the latents
partition with the contexts' tokens), not over the train windows: those are 20-40 windows, chosen for their
peaks and spread over quantile bins, so their token counts are small and say more about the selection than
about the latent; the corpus-wide count is what the scorers' test windows are drawn from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from ..prompts import Evidence, clean_piece

# A firing counts where it reaches this fraction of the latent's largest activation. TopK SAEs (and the top-k
# neurons) give every token k firings, so a latent also fires faintly on whatever is common ("the", ","); a
# quarter of the peak keeps the firings that the top and upper quantile windows show, where the explainer and
# the scorers look.
MIN_FIRING_FRACTION = 0.25
# Token ids kept per latent by the query, before ids of one text (" who", "who", "Who") are merged.
IDS_PER_LATENT = 20


@dataclass(frozen=True)
class TokenStats:
    """One latent's tokens: frequent (text, firings) commonest first, over `firings` strong firings in all, and
    the promoted texts, most promoted first (empty for a variant without a decoder)."""

    frequent: tuple[tuple[str, int], ...]
    firings: int
    promoted: tuple[str, ...]

    def evidence(self, n_frequent: int, n_promoted: int) -> Evidence:
        return Evidence(self.frequent[:n_frequent], self.promoted[:n_promoted])


def shown_text(piece: str) -> str:
    """A token's text as the evidence shows it: one line, outer spaces dropped (a space alone stays visible)."""
    text = clean_piece(piece).strip()
    return text or "␣"


def merge_forms(pairs: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """(text, count) pairs with one entry per text up to case and outer spaces, shown in its commonest form,
    the counts summed, commonest first (ties in first-seen order)."""
    totals: dict[str, int] = {}
    best: dict[str, tuple[int, str]] = {}
    for piece, n in pairs:
        text = shown_text(piece)
        key = text.lower()
        totals[key] = totals.get(key, 0) + n
        if key not in best or n > best[key][0]:
            best[key] = (n, text)
    return sorted(((best[key][1], n) for key, n in totals.items()), key=lambda pair: -pair[1])


def promoted_texts(logits: pa.Table) -> dict[int, tuple[str, ...]]:
    """Per latent of a `latent_logits` partition: the texts its decoder direction promotes, most first, each
    word once (its forms with and without a leading space merged)."""
    return {latent: tuple(text for text, _ in merge_forms([(t, 1) for t in tokens]))
            for latent, tokens in zip(logits.column("latent").to_pylist(), logits.column("top_tokens").to_pylist())}


def token_stats(frequent: pl.DataFrame, logits: pa.Table | None, decode: Callable[[Sequence[int]], list[str]]
                ) -> dict[int, TokenStats]:
    """Per latent, from the rows of sql/latent_top_tokens.sql and the partition's `latent_logits` (None or
    empty: no promoted tokens)."""
    promoted = promoted_texts(logits) if logits is not None else {}
    out = {}
    for (latent,), rows in frequent.partition_by("latent", as_dict=True).items():
        pairs = list(zip(decode(rows["token"].to_list()), rows["n"].to_list()))
        out[latent] = TokenStats(tuple(merge_forms(pairs)), int(rows["total"][0]), promoted.get(latent, ()))
    return out


# The token baseline: the commonest tokens until they cover this share of the strong firings, at most
# BASELINE_TOKENS of them, then the BASELINE_PROMOTED most promoted tokens. Half the firings names the token
# family of a word-like latent in two or three tokens, and stops a diffuse latent's list at a readable length.
BASELINE_COVERAGE = 0.5
BASELINE_TOKENS = 5
BASELINE_PROMOTED = 2
BASELINE_VERSION = f"tokens-{BASELINE_COVERAGE}-{BASELINE_TOKENS}-{BASELINE_PROMOTED}-{MIN_FIRING_FRACTION}"


def baseline_explanation(stats: TokenStats) -> str:
    """The LLM-free explanation: 'the tokens "who", "which", "whom"', then what they promote, if anything."""
    named, covered = [], 0
    for text, n in stats.frequent[:BASELINE_TOKENS]:
        named.append(f'"{text}"')
        covered += n
        if covered >= BASELINE_COVERAGE * stats.firings:
            break
    text = ("the token " if len(named) == 1 else "the tokens ") + ", ".join(named)
    promoted = [f'"{t}"' for t in stats.promoted[:BASELINE_PROMOTED]]
    return text + (f" (before {', '.join(promoted)})" if promoted else "")

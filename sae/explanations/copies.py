"""Catching an explainer that copies a worked example's answer instead of explaining the latent.

Texts are compared after normalising (lower case, every run of non-alphanumerics one space), by difflib's
ratio: twice the matched characters over both lengths. A copy with one word swapped, the template a small model
falls back on ('the suffix "ed" completing a verb' for the example's 'the suffix "ing" completing a verb'),
keeps 0.92 of it; answers that only share a word or two with an example ('city names' beside 'names of European
cities': 0.29; 'relative pronouns who, which, whom' beside 'female pronouns (she, her)': 0.58) stay below it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

# At or above this similarity an answer is a copy. 0.8 flags a template with one word changed (0.8-0.95) and
# passes a real answer that reuses a part of an example's phrasing (0.3-0.65); the pool's own answers are at
# most 0.37 apart, so a copy of one is never taken for a copy of another.
COPY_SIMILARITY = 0.8

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalised(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def similarity(a: str, b: str) -> float:
    """difflib's ratio of the two normalised texts, 1.0 for texts equal after normalising."""
    left, right = normalised(a), normalised(b)
    if left == right:
        return 1.0
    return difflib.SequenceMatcher(None, left, right, autojunk=False).ratio()


def copied_example(answer: str | None, shown: Sequence[str], threshold: float = COPY_SIMILARITY) -> str | None:
    """The worked example's answer (among those `shown` in the prompt) that `answer` copies, exactly or nearly;
    None for a genuine (or missing) answer."""
    if answer is None:
        return None
    best = max(shown, key=lambda example: similarity(answer, example), default=None)
    return best if best is not None and similarity(answer, best) >= threshold else None

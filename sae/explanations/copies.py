"""Catching an explainer that copies a worked example's answer (or its template) instead of explaining the
latent.

Texts are compared after normalising (lower case, every run of non-alphanumerics one space), by difflib's
ratio: twice the matched characters over both lengths. The example's template with its tokens swapped, which a
small model falls back on ('"ed" and "eds": the suffix that completes a verb' for the example's '"ing" and
"ings": the suffix that completes a verb'), keeps 0.89 of it; answers that share only the form and a word or two
with an example ('"which" and "who": pronouns that open a clause' beside '"not" and "never": words that negate a
verb': 0.51; 'city names' beside '"Paris" and "London": cities of Europe': 0.23) stay below it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

# At or above this similarity an answer is a copy. 0.8 flags a template with one word changed (0.8-0.95) and
# passes a real answer that reuses a part of an example's phrasing and the shared `"x" and "y":` form (0.2-0.65);
# the pool's own answers are at most 0.63 apart, so a copy of one is never taken for a copy of another.
COPY_SIMILARITY = 0.8

# An answer that opens with the same three words as an example fills the example's template with other tokens
# ('"ing" and "right": ...' for '"ing" and "ings": the suffix that completes a verb'); the pool's answers open
# with different words, and a genuine answer that happens to share an opening is asked again with other examples,
# where it no longer does.
TEMPLATE_WORDS = 3

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalised(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def similarity(a: str, b: str) -> float:
    """difflib's ratio of the two normalised texts, 1.0 for texts equal after normalising."""
    left, right = normalised(a), normalised(b)
    if left == right:
        return 1.0
    return difflib.SequenceMatcher(None, left, right, autojunk=False).ratio()


def same_opening(a: str, b: str, words: int = TEMPLATE_WORDS) -> bool:
    """Whether both texts open with the same `words` normalised words."""
    left, right = normalised(a).split()[:words], normalised(b).split()[:words]
    return len(left) == words and left == right


def copied_example(answer: str | None, shown: Sequence[str], threshold: float = COPY_SIMILARITY) -> str | None:
    """The worked example's answer (among those `shown` in the prompt) that `answer` copies: exactly, nearly
    (similarity at or above `threshold`), or as a template (the example's opening words with other tokens
    after them); None for a genuine (or missing) answer."""
    if answer is None:
        return None
    for example in sorted(shown, key=lambda example: -similarity(answer, example)):
        if similarity(answer, example) >= threshold or same_opening(answer, example):
            return example
    return None

"""The copy detector, and the retry of a copied answer with other worked examples.

The retry test scripts the LLM's answers (the real SmolLM2 cannot be made to copy on demand): the client
answers each prompt with the first worked example's answer it shows, unless the prompt shows the pool's
`PAIRED` example, which it answers genuinely."""

import dataclasses

import pytest

from sae.config import ExplainConfig
from sae.explanations.copies import COPY_SIMILARITY, copied_example, similarity
from sae.explanations.explainer import explain_with_retries, rows_for
from sae.llm.base import Completion
from sae.prompts import EXAMPLE_POOL, example_rotation

from .test_explainer import train_examples
from ..scoring.test_scorers import decode

CITIES, SUFFIX = (next(e.answer for e in EXAMPLE_POOL if e.answer.startswith(opening))
                  for opening in ('"Paris"', '"ing"'))
SHOWN = [CITIES, SUFFIX]  # '"Paris" and "London": cities of Europe', '"ing" and "ings": the suffix that completes a verb'


@pytest.mark.parametrize("answer", [CITIES, '  paris and London -- cities of Europe.', CITIES.upper()])
def test_an_exact_copy_is_caught_whatever_its_case_and_punctuation(answer):
    assert copied_example(answer, SHOWN) == CITIES


@pytest.mark.parametrize("answer, copied", [
    ('"ed" and "eds": the suffix that completes a verb', SUFFIX),  # the template, its tokens swapped
    ('"Rome" and "London": cities of Europe', CITIES),
    ('"ing" and "ings": the suffix completing verbs', SUFFIX),
    ('"ing" and "ings" in "Greenanarchy" and in "right"', SUFFIX),  # the example's opening, then anything
])
def test_a_near_copy_is_caught(answer, copied):
    assert copied_example(answer, SHOWN) == copied


@pytest.mark.parametrize("answer", ["relative pronouns: who, which, whom", "city names", "the Trojan War and Achilles",
                                    'the token "ing" after a verb stem', 'cities such as "Madrid"',
                                    '"which" and "who": pronouns that open a clause', None])
def test_a_genuine_answer_passes(answer):
    assert copied_example(answer, SHOWN) is None


def test_a_copy_is_judged_only_against_the_examples_shown_and_no_two_examples_look_alike():
    assert copied_example(EXAMPLE_POOL[3].answer, SHOWN) is None  # in the pool, not in this prompt
    assert copied_example(EXAMPLE_POOL[3].answer, [EXAMPLE_POOL[3].answer]) == EXAMPLE_POOL[3].answer
    assert similarity("she and her: the female pronouns", '"She" and "her" -- the female pronouns') == 1.0
    assert all(copied_example(a.answer, [b.answer]) is None for a in EXAMPLE_POOL for b in EXAMPLE_POOL if a is not b)
    assert COPY_SIMILARITY > max(similarity(a.answer, b.answer) for a in EXAMPLE_POOL for b in EXAMPLE_POOL
                                 if a is not b)


class CopiesUnlessPaired:
    """Answers with the first shown example's answer unless the prompt shows EXAMPLE_POOL[PAIRED]."""

    backend, model, supports_logprobs = "scripted", "scripted", False
    PAIRED = 2

    def __init__(self):
        self.calls = []

    def complete(self, requests, progress=False):
        self.calls.append(len(requests))
        out = []
        for request in requests:
            assistant = [text for role, text in request.messages if role == "assistant"]
            genuine = any(EXAMPLE_POOL[self.PAIRED].answer in text for text in assistant)
            text = "Explanation: tokens of the toy vocabulary" if genuine else assistant[0]
            out.append(Completion(text, prompt_tokens=100, completion_tokens=8, latency_s=0.5))
        return out


def test_a_copy_is_asked_again_with_other_examples_and_the_last_answer_is_kept():
    cfg = dataclasses.replace(ExplainConfig(), n_examples=4, max_attempts=3)
    client = CopiesUnlessPaired()
    latents = [0, 1, 2, 3, 4, 5]
    answers = {a.prompt.latent: a for a in explain_with_retries(train_examples(), latents, cfg, client, decode, None)}
    # Three attempts show the whole pool of six, two at a time: every latent meets the paired example once.
    shown = [[e.answer for e in example_rotation(attempt)] for attempt in range(3)]
    genuine_at = next(a for a in range(3) if EXAMPLE_POOL[CopiesUnlessPaired.PAIRED].answer in shown[a])
    assert genuine_at > 0  # the test needs a first attempt that copies
    for answer in answers.values():
        assert answer.attempts == genuine_at + 1 and answer.copied is None
        assert answer.prompt_tokens == 100 * answer.attempts and answer.latency_s == pytest.approx(0.5 * answer.attempts)
    assert client.calls == [6] * (genuine_at + 1)  # the copies, here all, are asked again
    table = rows_for([answers[latent] for latent in latents], client, "v")
    assert table.column("attempts").to_pylist() == [genuine_at + 1] * 6
    assert table.column("copied_example").null_count == 6
    # Out of attempts: the last answer is kept, and the row says which example it still copies.
    once = explain_with_retries(train_examples(), [0], dataclasses.replace(cfg, max_attempts=1), CopiesUnlessPaired(),
                                decode, None)
    row = rows_for(once, client, "v").to_pylist()[0]
    assert row["attempts"] == 1 and row["copied_example"] == EXAMPLE_POOL[0].answer
    assert row["explanation"] == EXAMPLE_POOL[0].answer

"""Intruder (as in delphi): can the scorer LLM tell a latent's windows from another latent's, with no explanation?

Each question shows `intruder_k` activating test windows of the latent and one activating test window of another
scored latent (the intruder, at a random position), each marked where its own latent fires; the LLM names the
odd one out, constrained to one excerpt number. The score is the accuracy over the latent's questions; a judge
that knows nothing gets 1 / (k + 1), the row's `chance`.

Control: the same question with the intruder replaced by one more window of the latent itself, the "right" answer
still the random position. Every window is then the latent's own, drawn at random and shown in random order, so
the position is independent of what the excerpts say and no judge, however biased, beats 1 / (k + 1) on average.

It reads no explanation, so its rows have explainer `none` (config.NO_EXPLAINER) and no explanation_latent: it
compares SAE variants and neuron baselines without an explainer.
"""

from __future__ import annotations

import random
from collections import Counter

from ..config import NO_EXPLAINER
from ..llm.base import ChatRequest, SamplingParams
from ..prompts import Window, intruder_format, intruder_messages, intruder_version, marked_text, parse_intruder
from .scorers import Scoring, Usage, blank_row


def marked(row: dict, s: Scoring) -> str:
    return marked_text(Window(tuple(s.decode(row["tokens"])), tuple(row["acts"])), s.fuzz_threshold)[0]


def questions(s: Scoring) -> list[tuple[tuple, list[dict], int]]:
    """Per judged latent and source: (row key, the windows shown in order, the intruder's position)."""
    k = s.cfg.intruder_k
    activating = {latent: [r for r in s.windows[latent] if r["kind"] == "quantile"] for latent in s.latents}
    out = []
    for latent in s.judged_latents:
        others = [other for other in s.latents if other != latent and activating[other]]
        own = activating[latent]
        if not others or len(own) < k + s.cfg.control:
            continue
        rng = random.Random(f"{s.seed}/{latent}/intruder")
        for _ in range(s.cfg.intruder_questions):
            shown = rng.sample(own, k + s.cfg.control)
            position = rng.randrange(k + 1)
            intruder = rng.choice(activating[rng.choice(others)])
            out.append(((latent, NO_EXPLAINER, "intruder", "real"), shown[:position] + [intruder] + shown[position:k],
                        position))
            if s.cfg.control:
                out.append(((latent, NO_EXPLAINER, "intruder", "control"), shown, position))
    return out


def intruder_rows(s: Scoring) -> list[dict]:
    client = s.need_client("intruder")
    k = s.cfg.intruder_k
    output_format = intruder_format(k + 1)
    sampling = SamplingParams(max_tokens=max(s.cfg.max_tokens, output_format.max_length + 1),
                              output_format=output_format)
    asked = questions(s)
    completions = s.complete([ChatRequest(intruder_messages([marked(r, s) for r in shown]), sampling)
                              for _, shown, _ in asked])
    right, answered, failed = Counter(), Counter(), {}
    usage: dict[tuple, Usage] = {}
    for (key, _, position), done in zip(asked, completions):
        usage.setdefault(key, Usage()).add(done)
        failed.setdefault(key, [])
        answer = parse_intruder(done.text, k + 1)
        if answer is None:
            failed[key].append(done.text)
            continue
        answered[key] += 1
        right[key] += answer == position
    rows = []
    for key in sorted(usage):  # n_examples: the questions answered
        row = blank_row(key, None, client.model, intruder_version(), s.now, chance=1 / (k + 1))
        rows.append(row | usage[key].columns() | {
            "accuracy": right[key] / answered[key] if answered[key] else None, "n_examples": answered[key],
            "n_activating": None, "n_failures": len(failed[key]),
            "failed_answers": failed[key]})
    return rows

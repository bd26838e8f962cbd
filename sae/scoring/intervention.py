"""Intervention (Paulo et al.): does the explanation say what the latent does to the model's output?

The subject model continues neutral prompts clean and steered by the latent (sae/scoring/steering.py, the
`steered_generations` table); the scorer LLM reads the explanation and every (clean, steered) pair of the latent,
each in a seeded random order, in one request (constrained to one 1/2 per pair), and names the steered
continuation of each. The score is the accuracy over the pairs (`accuracy`, chance 0.5) and per steering strength
(`strength_accuracy`, in score.intervention_strengths' order). A pair whose continuations are the same text
(steering too weak to change the greedy continuation) is asked all the same: nothing tells them apart, and it
counts at chance, as it should. The control is another latent's explanation (each explainer's derangement).
Besides the explainers of `explanations`, it judges the output-side explanations (sae/scoring/output_explanations.py).

Latents of variants without a decoder (planted) cannot be steered: they get no rows, and the calibration says
"not applicable".
"""

from __future__ import annotations

import random
from collections import defaultdict

from ..llm.base import ChatRequest, SamplingParams
from ..prompts import intervention_format, intervention_messages, intervention_version, parse_steered
from .scorers import Scoring, Usage, blank_row


def pairs_of(s: Scoring) -> dict[int, list[tuple[float, str, str, str, int]]]:
    """Per latent with steered rows: (strength, prompt, first shown, second shown, the steered one's place 0/1)
    per steered continuation, the order drawn with the seed (the same for every explainer and source)."""
    clean, steered = {}, defaultdict(list)
    for row in s.generations.to_pylist():
        if row["purpose"] == "explain":  # the output explainer's evidence, never judged
            continue
        if row["latent"] is None:
            clean[row["prompt_index"]] = row
        else:
            steered[row["latent"]].append(row)
    out = {}
    for latent in s.judged_latents:
        rng = random.Random(f"{s.seed}/{latent}/intervention")
        pairs = []
        for row in sorted(steered.get(latent, []), key=lambda r: (r["strength"], r["prompt_index"])):
            plain = clean[row["prompt_index"]]["completion"]
            place = rng.randrange(2)
            first, second = (row["completion"], plain) if place == 0 else (plain, row["completion"])
            pairs.append((row["strength"], row["prompt"], first, second, place))
        if pairs:
            out[latent] = pairs
    return out


def intervention_rows(s: Scoring) -> list[dict]:
    if s.generations is None or s.generations.num_rows == 0:
        return []
    client = s.need_client("intervention")
    strengths = list(s.cfg.intervention_strengths)
    asked = []
    for latent, pairs in pairs_of(s).items():
        output_format = intervention_format(len(pairs))
        sampling = SamplingParams(max_tokens=max(s.cfg.max_tokens, output_format.max_length + 1),
                                  output_format=output_format)
        shown = [(prompt, first, second) for _, prompt, first, second, _ in pairs]
        for explainer, explained in {**s.by_explainer, **s.output_explainers}.items():
            for source, mapping in explained.sources:
                if latent in mapping:
                    request = ChatRequest(intervention_messages(explained.text_of[mapping[latent]], shown), sampling)
                    asked.append(((latent, explainer, "intervention", source), mapping[latent], pairs, request))
    out = []
    for (key, explanation_latent, pairs, _), done in zip(asked, s.complete([a[-1] for a in asked])):
        usage = Usage()
        usage.add(done)
        row = blank_row(key, explanation_latent, client.model, intervention_version(), s.now, chance=0.5)
        row |= usage.columns()
        picks = parse_steered(done.text, len(pairs))
        if picks is None:
            out.append(row | {"n_failures": len(pairs), "failed_answers": [done.text]})
            continue
        right = defaultdict(list)
        for (strength, *_, place), pick in zip(pairs, picks):
            right[strength].append(pick == place)
        every = [hit for hits in right.values() for hit in hits]
        out.append(row | {"accuracy": sum(every) / len(every), "n_examples": len(every),
                          "strength_accuracy": [sum(right[x]) / len(right[x]) if right[x] else None
                                                for x in strengths]})
    return out

"""Output-side explanations (Paulo et al.): what a latent makes the model write, told from its steered
continuations and the tokens its decoder direction promotes rather than from the inputs it fires on.

Per latent the intervention scorer judges, the LLM reads the clean and steered continuations of
score.output_prompts (rows of purpose `explain` in `steered_generations`: other prompts than the scorer judges,
so no explanation is judged on what it was written from) and the promoted tokens, and answers like the input-side
explainer. Rows have the `explanations` schema with explainer `llm-output`, in the `output_explanations` table;
the intervention scorer judges them beside every other explainer, each against its derangement (the control).
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from ..explanations.copies import copied_example
from ..explanations.explainer import Answer, LatentPrompt, rows_for
from ..llm.base import ChatRequest, LLMClient, SamplingParams
from ..prompts import OUTPUT_EXAMPLE, output_explainer_messages, output_explainer_version, parse_explanation

OUTPUT_EXPLAINER = "llm-output"
PROMOTED_SHOWN = 8


def output_prompts(generations: pa.Table, promoted: dict[int, tuple[str, ...]], latents: list[int],
                   max_tokens: int) -> list[LatentPrompt]:
    """One request per latent of `latents` with steered `explain` rows: per prompt, its clean continuation and the
    latent's steered ones, weakest strength first, then its promoted tokens."""
    clean, steered = {}, defaultdict(list)
    for row in generations.to_pylist():
        if row["purpose"] != "explain":
            continue
        if row["latent"] is None:
            clean[row["prompt_index"]] = row
        else:
            steered[row["latent"]].append(row)
    out = []
    for latent in latents:
        by_prompt = defaultdict(list)
        for row in sorted(steered.get(latent, []), key=lambda r: (r["prompt_index"], r["strength"])):
            by_prompt[row["prompt_index"]].append(row["completion"])
        if not by_prompt:
            continue
        pairs = [(clean[i]["prompt"], clean[i]["completion"], texts) for i, texts in sorted(by_prompt.items())]
        messages = output_explainer_messages(pairs, promoted.get(latent, ())[:PROMOTED_SHOWN])
        # A small model may answer with one of the continuations it read: flagged as a copy, like the example's.
        shown = (OUTPUT_EXAMPLE[-1], *(text for _, plain, steered in pairs for text in (plain, *steered)))
        out.append(LatentPrompt(latent, ChatRequest(messages, SamplingParams(max_tokens=max_tokens)), [], shown))
    return out


def output_explanation_rows(client: LLMClient, prompts: list[LatentPrompt], progress: bool = False) -> pa.Table:
    """The LLM's output-side explanation of each prompt's latent, `copied_example` holding the worked example's
    answer or the continuation it copies (kept and judged all the same: the copy is what the LLM said)."""
    answers = []
    for prompt, done in zip(prompts, client.complete([p.request for p in prompts], progress=progress)):
        copied = copied_example(parse_explanation(done.text), prompt.shown_answers)
        answers.append(Answer(prompt, done, copied, 1, done.prompt_tokens, done.completion_tokens, done.latency_s,
                              done.cached))
    return rows_for(answers, client, output_explainer_version(), OUTPUT_EXPLAINER)

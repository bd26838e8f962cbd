"""Simulation (Bills et al., OpenAI): how well does the explanation predict the latent's activation at each token?

Per latent, `simulation_activating` activating test windows (spread over the quantile bins) and
`simulation_silent` silent ones, all in one request: the scorer LLM reads the explanation and each window's
tokens (the subject model's) and gives every token a 0-10 activation, as JSON constrained to exactly one number
per token on every backend that decodes by a format (llama.cpp's grammar, vLLM's regex, the transformers runtime's
logits mask; an OpenAI-compatible server gets the JSON schema, which fixes the list lengths only where the server
honours `prefixItems`). The score is Pearson's correlation of the predictions with the true activations over every
token of the windows (`correlation`, the primary metric) and over the activating windows' tokens alone
(`correlation_activating`, how well it grades where the latent fires); NULL where undefined (a constant
prediction, or a reply that cannot be read). Chance is 0. The control is another latent's explanation (each
explainer's derangement), as for detection.

With `simulation_method: all_at_once` nothing is generated: the scorer reads a reply that lists the tokens one per
line, each followed by a tab and a placeholder, in one forward pass, and a token's prediction is the mean digit
(0-9) under its next-token probabilities after the tab (Bills et al.'s method). Every reply is then readable, and
a latent costs one forward pass per explainer and source instead of hundreds of generated tokens.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from ..config import ScoreConfig
from ..llm.base import ChatRequest, ChoiceText, SamplingParams
from ..prompts import (SIMULATION_DIGITS, parse_simulation, simulation_format, simulation_lines_prompt,
                       simulation_messages, simulation_version)
from .metrics import pearson
from .scorers import Scoring, Usage, blank_row, defined, sample_for_llm


def simulated_windows(windows: list[dict], cfg: ScoreConfig, seed: int, latent: int) -> list[dict]:
    """The test windows the simulation scorer shows for a latent, activating first; the same for every explainer."""
    cfg = dataclasses.replace(cfg, n_activating=cfg.simulation_activating, n_silent=cfg.simulation_silent)
    activating, silent = sample_for_llm(windows, cfg, random.Random(f"{seed}/{latent}/simulation"))
    return activating + silent


def correlations(rows: list[dict], predictions: list[list[float]]) -> tuple[float | None, float | None]:
    """Pearson's r of predicted and true activations over all the windows' tokens, and over the activating ones'."""
    truth = [np.asarray(row["acts"], dtype=np.float64) for row in rows]
    active = [row["kind"] == "quantile" for row in rows]

    def r(keep: list[bool]) -> float | None:
        if not any(keep):
            return None
        return defined(pearson(np.concatenate([p for p, k in zip(predictions, keep) if k]),
                               np.concatenate([t for t, k in zip(truth, keep) if k])))

    return r([True] * len(rows)), r(active)


def simulation_rows(s: Scoring) -> list[dict]:
    client = s.need_client("simulation")
    read_replies = s.cfg.simulation_method == "all_at_once"
    asked = []  # (key, explanation latent, windows, request)
    for latent in s.judged_latents:
        rows = simulated_windows(s.windows[latent], s.cfg, s.seed, latent)
        if not rows:
            continue
        pieces = [list(s.decode(row["tokens"])) for row in rows]
        sampling = None if read_replies else structured_sampling(s.cfg, [len(p) for p in pieces])
        for explainer, explained in s.by_explainer.items():
            for source, mapping in explained.sources:
                if latent in mapping:
                    text = explained.text_of[mapping[latent]]
                    if read_replies:
                        messages, reply = simulation_lines_prompt(text, pieces)
                        request = ChoiceText(messages, tuple(reply), SIMULATION_DIGITS)
                    else:
                        request = ChatRequest(simulation_messages(text, pieces), sampling)
                    asked.append(((latent, explainer, "simulation", source), mapping[latent], rows, request))
    requests = [request for *_, request in asked]
    answers = s.in_batches(client.choice_logprobs, requests) if read_replies else s.complete(requests)
    out = []
    for (key, explanation_latent, rows, _), answer in zip(asked, answers):
        row = blank_row(key, explanation_latent, client.prompt_logprobs_model if read_replies else client.model,
                        simulation_version(), s.now, chance=0.0)
        row["n_activating"] = sum(r["kind"] == "quantile" for r in rows)
        lengths = [len(r["tokens"]) for r in rows]
        if read_replies:
            row |= Usage(1, answer.prompt_tokens, 0).columns()
            predictions = expected_digits(answer.logprobs, lengths)
        else:
            usage = Usage()
            usage.add(answer)
            row |= usage.columns()
            predictions = parse_simulation(answer.text, lengths)
        if predictions is None:
            row |= {"n_failures": len(rows), "failed_answers": [answer.text]}
        else:
            every, activating = correlations(rows, predictions)
            row |= {"n_examples": len(rows), "correlation": every, "correlation_activating": activating}
        out.append(row)
    return sorted(out, key=lambda r: (r["latent"], r["explainer"], r["source"]))


def structured_sampling(cfg: ScoreConfig, lengths: list[int]) -> SamplingParams:
    """Sampling of a structured reply: constrained to one 0-10 per token, with room for the longest such reply."""
    output_format = simulation_format(lengths)
    return SamplingParams(max_tokens=max(cfg.max_tokens, output_format.max_length + 1), output_format=output_format)


def expected_digits(logprobs: list[list[float]], lengths: list[int]) -> list[list[float]]:
    """Each token's prediction: the mean digit under the scorer's probabilities of the digits alone after its tab
    (renormalised: whatever else it would have written there is no prediction), per window."""
    weights = np.exp(np.asarray(logprobs, dtype=np.float64))
    values = (weights @ np.arange(weights.shape[1])) / weights.sum(axis=1)
    bounds = np.cumsum([0, *lengths])
    return [values[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]

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
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from ..llm.base import ChatRequest, SamplingParams
from ..prompts import parse_simulation, simulation_format, simulation_messages, simulation_version
from .metrics import pearson
from .scorers import Scoring, Usage, blank_row, defined, sample_for_llm


def simulated_windows(s: Scoring, latent: int) -> list[dict]:
    """The windows the simulation scorer shows for a latent, activating first; the same for every explainer."""
    cfg = dataclasses.replace(s.cfg, n_activating=s.cfg.simulation_activating, n_silent=s.cfg.simulation_silent)
    activating, silent = sample_for_llm(s.windows[latent], cfg, random.Random(f"{s.seed}/{latent}/simulation"))
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
    asked = []  # (key, explanation latent, windows, request)
    for latent in s.judged_latents:
        rows = simulated_windows(s, latent)
        if not rows:
            continue
        pieces = [list(s.decode(row["tokens"])) for row in rows]
        output_format = simulation_format([len(p) for p in pieces])
        sampling = SamplingParams(max_tokens=max(s.cfg.max_tokens, output_format.max_length + 1),
                                  output_format=output_format)
        for explainer, explained in s.by_explainer.items():
            for source, mapping in explained.sources:
                if latent in mapping:
                    messages = simulation_messages(explained.text_of[mapping[latent]], pieces)
                    asked.append(((latent, explainer, "simulation", source), mapping[latent], rows,
                                  ChatRequest(messages, sampling)))
    completions = s.complete([request for *_, request in asked])
    out = []
    for (key, explanation_latent, rows, _), done in zip(asked, completions):
        usage = Usage()
        usage.add(done)
        row = blank_row(key, explanation_latent, client.model, simulation_version(), s.now, chance=0.0)
        row |= usage.columns() | {"n_activating": sum(r["kind"] == "quantile" for r in rows)}
        predictions = parse_simulation(done.text, [len(r["tokens"]) for r in rows])
        if predictions is None:
            row |= {"n_failures": len(rows), "failed_answers": [done.text]}
        else:
            every, activating = correlations(rows, predictions)
            row |= {"n_examples": len(rows), "correlation": every, "correlation_activating": activating}
        out.append(row)
    return sorted(out, key=lambda r: (r["latent"], r["explainer"], r["source"]))

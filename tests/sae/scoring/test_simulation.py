"""The simulation scorer: its correlations equal numpy's on a constructed case, replies are constrained to one
0-10 number per token, and what cannot be read or correlated is NULL; read all at once, its predictions equal
the model's own next-token probabilities."""

import re

import numpy as np
import pyarrow as pa
import pytest

from sae.config import ScoreConfig
from sae.explanations.explainer import SCHEMA as EXPLANATIONS
from sae.llm.base import BackendError, Completion, LLMClient
from sae.prompts import format_simulation, parse_simulation, simulation_format
from sae.scoring.scorers import score_partition
from sae.scoring.scorers import test_windows as windows_by_latent  # not collected as a test under this name

WORDS = ["volcano", "river", "budget", "music", "train", "school", "paper", "green", "city", "winter"]
# The fixed predictions: by the token's word, whatever the explanation.
PREDICTED = {" volcano": 9, " river": 4, " budget": 1}


def decode(ids):
    return [f" {WORDS[i]}" for i in ids]


def examples() -> pa.Table:
    rng = np.random.default_rng(0)
    rows = []
    for latent in (0, 1):
        for i in range(6):
            activating = i < 3
            ids = list(rng.integers(1, len(WORDS), 8 + i))  # windows of different lengths
            acts = [0.0] * len(ids)
            if activating:
                ids[2] = 0
                acts[2], acts[3] = 2.0 + i, 0.5 * i
            rows.append({"latent": latent, "split": "test", "kind": "quantile" if activating else "random",
                         "bin": i if activating else None, "ctx_id": i, "start": 0, "peak_act": max(acts),
                         "tokens": ids, "acts": acts})
    return pa.Table.from_pylist(rows)


class FixedPredictions(LLMClient):
    """Predicts PREDICTED[token] for each token the prompt lists (0 for others), in the constrained JSON; for the
    explanation "unreadable" it replies in prose."""

    backend, model = "scripted", "fixed"

    def complete(self, requests, progress=False):
        out = []
        for request in requests:
            prompt = request.messages[-1][1]
            windows = [line.split("): ", 1)[1].split("|") for line in prompt.splitlines()
                       if re.match(r"Excerpt \d+ \(", line)]
            text = format_simulation([[PREDICTED.get(t, 0) for t in w] for w in windows])
            assert request.sampling.output_format.matches(text)
            out.append(Completion("no idea" if "unreadable" in prompt else text, 100, 50, 0.0))
        return out


def test_simulation_correlation_equals_numpys_over_all_windows_and_the_activating_ones():
    explanations = pa.Table.from_pylist(
        [{"latent": 0, "explainer": "llm", "explanation": "the word volcano", "parsed": True},
         {"latent": 1, "explainer": "llm", "explanation": "unreadable", "parsed": True}], schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("simulation",), simulation_activating=3, simulation_silent=3)
    table = examples()
    scores = score_partition(table, explanations, cfg, decode, seed=0, n_bins=3, fuzz_threshold=0.0,
                             client=FixedPredictions())
    rows = {(r["latent"], r["source"]): r for r in scores.to_pylist()}
    windows = [r for r in table.to_pylist() if r["latent"] == 0]
    predicted = [np.array([PREDICTED.get(t, 0) for t in decode(w["tokens"])], float) for w in windows]
    truth = [np.array(w["acts"]) for w in windows]
    every = np.corrcoef(np.concatenate(predicted), np.concatenate(truth))[0, 1]
    active = np.corrcoef(np.concatenate(predicted[:3]), np.concatenate(truth[:3]))[0, 1]
    real = rows[(0, "real")]
    assert real["correlation"] == pytest.approx(every, abs=1e-6)
    assert real["correlation_activating"] == pytest.approx(active, abs=1e-6)
    assert real["n_examples"] == 6 and real["n_activating"] == 3 and real["chance"] == 0.0
    assert (real["n_requests"], real["prompt_tokens"], real["completion_tokens"]) == (1, 100, 50)
    # Latent 1 with its own explanation ("unreadable"), and latent 0 with it as its control: no reply read, so
    # nothing is defined; latent 1's control (latent 0's explanation) is read.
    for key in ((1, "real"), (0, "control")):
        failed = rows[key]
        assert failed["correlation"] is None and failed["n_failures"] == 6 and failed["failed_answers"] == ["no idea"]
    assert rows[(1, "control")]["explanation_latent"] == 0 and rows[(1, "control")]["correlation"] is not None


def test_simulation_replies_are_constrained_and_read():
    fmt = simulation_format([3, 2])
    assert fmt.matches('{"activations": [[0, 10, 3], [7, 0]]}')
    assert not fmt.matches('{"activations": [[0, 11, 3], [7, 0]]}')  # above 10
    assert not fmt.matches('{"activations": [[0, 1], [7, 0]]}')  # a token short
    assert parse_simulation('{"activations": [[0, 10, 3], [7, 0]]}', [3, 2]) == [[0, 10, 3], [7, 0]]
    assert parse_simulation('{"activations":[[0,12,3,4],[7,0]]}', [3, 2]) == [[0, 10, 3], [7, 0]]  # clipped, cut
    assert parse_simulation('{"activations": [[0, 1], [7, 0]]}', [3, 2]) is None


def test_simulation_and_intruder_through_llamacpp_read_every_reply():
    """The real SmolLM2 on llama.cpp, constrained by the grammars: every reply reads, one number per token."""
    pytest.importorskip("xllamacpp")
    from pathlib import Path

    from sae.config import LLMConfig
    from sae.llm import make_client

    explanations = pa.Table.from_pylist(
        [{"latent": latent, "explainer": "llm", "explanation": "the word volcano", "parsed": True}
         for latent in (0, 1)], schema=EXPLANATIONS)
    # One request each (one judged latent, no control): the CPU test budget is seconds.
    cfg = ScoreConfig(scorers=("simulation", "intruder"), simulation_activating=2, simulation_silent=1,
                      intruder_k=2, intruder_questions=1, llm_n_latents=1, control=False)
    client = make_client(LLMConfig(runtime="llamacpp", device="cpu", batch_size=2), Path("unused"))
    try:
        table = score_partition(examples(), explanations, cfg, decode, seed=0, n_bins=3, fuzz_threshold=0.0,
                                client=client)
    finally:
        client.close()
    rows = table.to_pylist()
    assert sorted(r["scorer"] for r in rows) == ["intruder", "simulation"]
    for row in rows:
        assert row["n_failures"] == 0 and row["n_requests"] == 1 and row["completion_tokens"] > 0, row
        assert row["n_examples"] == (1 if row["scorer"] == "intruder" else 3)


def test_all_at_once_simulation_equals_the_reference_from_the_models_own_next_token_probabilities(
        model_lake, converted_model):
    """The real SmolLM2 (transformers) reads each reply once; every token's prediction is the mean digit after its
    tab, which this test recomputes from a forward pass of its own over the same chat prompt and reply."""
    import torch

    from sae.config import BUILTIN_MODEL
    from sae.prompts import SIMULATION_DIGITS, simulation_lines_prompt
    from sae.scoring.simulation import correlations, simulated_windows

    from .real_model import reference_model, scores_by_latent_and_source

    explanations = pa.Table.from_pylist(
        [{"latent": latent, "explainer": "llm", "explanation": text, "parsed": True}
         for latent, text in ((0, "the word volcano"), (1, "words about money"))], schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("simulation",), simulation_activating=2, simulation_silent=1,
                      simulation_method="all_at_once")
    rows = scores_by_latent_and_source(examples(), explanations, cfg, decode, model_lake, batch_size=2)
    assert set(rows) == {(0, "real"), (0, "control"), (1, "real"), (1, "control")}

    model, tokenizer = reference_model(converted_model)
    digits = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in SIMULATION_DIGITS]
    assert all(len(ids) == 1 for ids in digits)
    texts = {0: "the word volcano", 1: "words about money"}
    for (latent, source), row in rows.items():
        windows = simulated_windows(windows_by_latent(examples(), [latent])[latent], cfg, 0, latent)  # the same draw
        messages, pieces = simulation_lines_prompt(texts[row["explanation_latent"]],
                                                   [decode(w["tokens"]) for w in windows])
        prompt = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                               add_generation_prompt=True, tokenize=False)
        ids, marks = tokenizer(prompt, add_special_tokens=False)["input_ids"], []
        for piece in pieces:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
            marks.append(len(ids) - 1)
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, marks].double(), dim=-1)
        at = probs[:, [d[0] for d in digits]]
        expected = ((at @ torch.arange(10, dtype=torch.float64)) / at.sum(dim=1)).numpy()
        bounds = np.cumsum([0] + [len(w["tokens"]) for w in windows])
        every, activating = correlations(windows, [expected[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        assert row["correlation"] == pytest.approx(every, abs=1e-4)
        assert row["correlation_activating"] == pytest.approx(activating, abs=1e-4)
        assert (row["n_requests"], row["completion_tokens"], row["n_failures"]) == (1, 0, 0)
        assert row["prompt_tokens"] == len(ids) and row["scorer_model"] == BUILTIN_MODEL


def test_all_at_once_simulation_needs_a_backend_that_reads_next_token_probabilities():
    explanations = pa.Table.from_pylist(
        [{"latent": 0, "explainer": "llm", "explanation": "the word volcano", "parsed": True}], schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("simulation",), simulation_method="all_at_once", control=False)
    with pytest.raises(BackendError, match="simulation_method: structured"):
        score_partition(examples(), explanations, cfg, decode, seed=0, n_bins=3, fuzz_threshold=0.0,
                        client=FixedPredictions())

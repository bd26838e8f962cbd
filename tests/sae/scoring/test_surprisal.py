"""The surprisal scorer with the real SmolLM2 (transformers over the converted model), against a reference
computed here by hand from the model's own forward pass."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from sae.config import BUILTIN_MODEL, LLMConfig, ScoreConfig
from sae.explanations.explainer import SCHEMA as EXPLANATIONS
from sae.llm import BackendError, ScoredText, make_client
from sae.prompts import surprisal_contexts
from sae.scoring.scorers import window_text

from .real_model import reference_model, scores_by_latent_and_source
from .test_scorers import _examples, decode

TEXTS = {0: "the word volcano", 1: "talk about school budgets"}


def reference_logprob(model, tokenizer, context: str, text: str) -> float:
    """Mean log-prob of the text's tokens after the context, from one forward pass of the model."""
    context_ids = tokenizer(context)["input_ids"]
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([context_ids + text_ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return float(np.mean([logprobs[len(context_ids) - 1 + j, token].item() for j, token in enumerate(text_ids)]))


def test_surprisal_equals_the_reference_from_the_models_log_probs(model_lake, converted_model):
    # Four activating and four silent test windows per latent, all of which the scorer then reads.
    examples = pa.Table.from_pylist([r for r in _examples(np.random.default_rng(1)).to_pylist() if r["ctx_id"] % 6 < 4])
    explanations = pa.Table.from_pylist([{"latent": k, "explanation": v, "parsed": True} for k, v in TEXTS.items()],
                                        schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("surprisal",), n_activating=4, n_silent=4)
    rows = scores_by_latent_and_source(examples, explanations, cfg, decode, model_lake, batch_size=5)
    assert set(rows) == {(0, "real"), (0, "control"), (1, "real"), (1, "control")}

    model, tokenizer = reference_model(converted_model)
    test = examples.to_pylist()
    memo = {}

    def logprob(context, text):
        if (context, text) not in memo:
            memo[context, text] = reference_logprob(model, tokenizer, context, text)
        return memo[context, text]

    for (latent, source), row in rows.items():
        windows = [w for w in test if w["latent"] == latent]
        plain, explained = surprisal_contexts(TEXTS[row["explanation_latent"]])
        texts = [window_text(w, decode) for w in windows]
        reduction = [logprob(explained, text) - logprob(plain, text) for text in texts]
        labels = [w["kind"] == "quantile" for w in windows]
        assert row["auc"] == pytest.approx(roc_auc_score(labels, reduction), abs=1e-6)
        top = set(np.argsort(-np.array(reduction), kind="stable")[: sum(labels)])
        predictions = [i in top for i in range(len(windows))]
        assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predictions), abs=1e-6)
        assert (row["n_examples"], row["n_activating"], row["scorer_model"]) == (8, 4, BUILTIN_MODEL)
    # Only activating windows hold "volcano": naming it lowers their loss more than the silent windows'.
    assert rows[(0, "real")]["auc"] > 0.7


def test_llamacpp_runtime_reads_prompt_log_probs_with_transformers(model_lake):
    pytest.importorskip("xllamacpp")
    client = make_client(LLMConfig(runtime="llamacpp", device="cpu", batch_size=2), model_lake)
    try:
        assert client.runtime == "llamacpp" and client.prompt_logprobs_model == BUILTIN_MODEL
        (logprobs,) = client.prompt_logprobs([ScoredText("Text:\n", "The capital of France is Paris.")])
    finally:
        client.close()
    assert len(logprobs) >= 6 and all(value < 0 for value in logprobs)


def test_openai_says_which_backend_gives_prompt_log_probs():
    client = make_client(LLMConfig(backend="openai", base_url="http://127.0.0.1:9/v1"), lake_root=None)
    with pytest.raises(BackendError, match=r"openai backend gives no log-probabilities.*'local'.*'vllm'"):
        client.prompt_logprobs([ScoredText("a", "b")])

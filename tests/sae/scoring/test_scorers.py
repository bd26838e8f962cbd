"""Scorers without an LLM: answer parsing, probabilities from log-probs, fuzzing marks, the control's
derangement, and the embedding scorer end to end with the real offline embedder."""

import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from sae.config import ScoreConfig
from sae.explanations.explainer import SCHEMA as EXPLANATIONS
from sae.llm.base import Completion, LLMClient, TokenLogprobs
from sae.prompts import format_answers, parse_answers
from sae.scoring.scorers import derangement, fuzzing_items, score_partition, scored_latents, yes_probabilities

WORDS = ["volcano", "the", "river", "budget", "music", "train", "school", "paper", "green", "city", "winter"]


def decode(ids):
    return [f" {WORDS[i]}" for i in ids]


def test_derangement_moves_every_latent_and_is_fixed_by_the_seed():
    latents = list(range(3, 40, 3))
    mapping = derangement(latents, seed=7)
    assert sorted(mapping) == latents and sorted(mapping.values()) == latents
    assert all(a != b for a, b in mapping.items())
    assert mapping == derangement(latents, seed=7) and mapping != derangement(latents, seed=8)
    assert derangement([5], seed=0) == {}


@pytest.mark.parametrize("reply, expected", [
    ('{"answers": [1, 0, 1]}', [True, False, True]),
    ('{"answers":[1,0,1]}', [True, False, True]),  # a server that takes only the schema may space it so
    ('Sure.\n{"answers": [yes, no, Yes]}', [True, False, True]),  # unconstrained replies are read leniently
    ('[1, 1]\n{"answers": [0, 0, 1]}', [False, False, True]),
    ('{"answers": [1, 0]}', None),
    ('{"answers": [1, 0, 1, 1, 0, 1,', [True, False, True]),  # ran on past the list, cut by max_tokens
    ('{"answers": [2, 0, 1]}', None),
    ("I think the first one.", None),
])
def test_scorer_answers_are_read_robustly(reply, expected):
    assert parse_answers(reply, 3) == expected


def test_yes_probability_comes_from_the_log_probs_of_each_answer_digit():
    def token(text, p_one):
        return TokenLogprobs(text, {"1": math.log(p_one), " 0": math.log(1 - p_one), "x": -9.0})

    logprobs = [TokenLogprobs("Answer", {}), TokenLogprobs(":", {}), TokenLogprobs(" [", {}), token("1", 0.8),
                TokenLogprobs(",", {}), token(" 0", 0.3), TokenLogprobs("]", {})]
    assert yes_probabilities(logprobs, 2) == pytest.approx([0.8, 0.3])
    assert yes_probabilities(logprobs, 1) == pytest.approx([0.8])  # the first n digits, as parsed
    assert yes_probabilities(logprobs, 3) is None and yes_probabilities(None, 2) is None


def test_fuzzing_marks_true_tokens_in_activating_windows_and_as_many_random_ones_elsewhere():
    import random

    activating = [{"tokens": [1, 2, 0, 3], "acts": [0.0, 0.0, 2.0, 0.0], "bin": 3},
                  {"tokens": [0, 4, 5, 6], "acts": [1.0, 0.0, 0.0, 0.0], "bin": 1}]
    silent = [{"tokens": [7, 8, 9, 10], "acts": [0.0] * 4, "bin": None}]
    items = fuzzing_items(activating, silent, decode, 0.0, wrong_in_activating=True, rng=random.Random(0))
    assert [i.label for i in items] == [True, True, False, False, False]
    assert items[0].text == "the river<< volcano>> budget" and items[0].bin == 3
    assert all(i.text.count("<<") == 1 for i in items)
    wrong = items[3:]  # activating windows marked at inactive tokens
    assert "<< volcano>>" not in wrong[0].text and "<<volcano>>" not in wrong[1].text


def _examples(rng):
    rows = []
    for latent in (0, 1):
        for i in range(12):
            activating = i < 6
            ids = list(rng.integers(1, len(WORDS), 8))
            acts = [0.0] * 8
            if activating:
                ids[4] = 0  # only activating windows hold "volcano"
                acts[4] = 1.0 + i
            rows.append({"latent": latent, "split": "test", "kind": "quantile" if activating else "random",
                         "bin": i % 3 if activating else None, "ctx_id": i, "start": 0, "peak_act": max(acts),
                         "tokens": ids, "acts": acts})
    return pa.Table.from_pylist(rows)


def test_embedding_scorer_gives_auc_1_when_the_explanation_names_the_only_shared_word():
    from sae.embedding import Embedder

    examples = _examples(np.random.default_rng(0))
    explanations = pa.Table.from_pylist(
        [{"latent": 0, "explainer": "llm", "explanation": "the word volcano", "parsed": True},
         {"latent": 1, "explainer": "llm", "explanation": "mentions of a volcano", "parsed": True},
         # The token baseline explained both latents too; its text names no word of the activating windows.
         {"latent": 0, "explainer": "tokens", "explanation": "the tokens \"music\"", "parsed": True},
         {"latent": 1, "explainer": "tokens", "explanation": "the tokens \"paper\"", "parsed": True}],
        schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("embedding",))
    table = score_partition(examples, explanations, cfg, decode, seed=0, n_bins=3, fuzz_threshold=0.0,
                            embedder=Embedder())
    rows = {(r["latent"], r["explainer"], r["source"]): r for r in table.to_pylist()}
    assert set(rows) == {(latent, explainer, source) for latent in (0, 1) for explainer in ("llm", "tokens")
                         for source in ("real", "control")}
    real = rows[(0, "llm", "real")]
    assert real["auc"] == 1.0 and real["balanced_accuracy"] == 1.0 and real["n_examples"] == 12
    assert real["bin_accuracy"] == [1.0, 1.0, 1.0] and real["silent_accuracy"] == 1.0
    assert rows[(0, "llm", "control")]["explanation_latent"] == 1
    # Each explainer is scored on its own texts, on the same windows: the baseline's misses the word.
    assert rows[(0, "tokens", "real")]["auc"] < 1.0 and rows[(0, "tokens", "real")]["n_examples"] == 12
    assert rows[(0, "tokens", "control")]["explanation_latent"] == 1


def test_the_scored_latents_are_the_llms_and_a_cap_keeps_those_first():
    explanations = pl.DataFrame({"latent": [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7],
                                 "explainer": ["llm"] * 4 + ["tokens"] * 7})
    assert scored_latents(explanations, None, seed=0) == [1, 2, 3, 4]  # the baseline's others: not scored
    assert scored_latents(explanations.filter(pl.col("explainer") == "tokens"), None, seed=0) == [1, 2, 3, 4, 5, 6, 7]
    assert scored_latents(explanations, 9, seed=0) == [1, 2, 3, 4, 5, 6, 7]
    assert scored_latents(explanations, 5, seed=0)[:4] == [1, 2, 3, 4]  # every LLM latent, one more
    three = scored_latents(explanations, 3, seed=0)
    assert len(three) == 3 and set(three) < {1, 2, 3, 4} and three == scored_latents(explanations, 3, seed=0)


class ScriptedClient(LLMClient):
    """Answers "every window activates" in the constrained format, except to prompts whose explanation is
    UNREADABLE, where it rambles. A stand-in: a real constrained backend cannot give an unreadable answer,
    and this test is about what the lake holds when nothing could be judged."""

    backend, model = "scripted", "scripted"

    def complete(self, requests, progress=False):
        out = []
        for request in requests:
            n = len(request.sampling.output_format.slots) // 2
            text = "I cannot tell." if UNREADABLE in request.messages[-1][1] else format_answers([True] * n)
            out.append(Completion(text, 10, 5, 0.0))
        return out


UNREADABLE = "an explanation the judge cannot use"
FLOAT_COLUMNS = ("balanced_accuracy", "f1", "precision", "recall", "accuracy", "auc", "silent_accuracy")


def test_scores_hold_null_not_nan_where_nothing_could_be_judged(tmp_path):
    import duckdb

    from sae.lake import write_parquet

    explanations = pa.Table.from_pylist(
        [{"latent": 0, "explanation": UNREADABLE, "parsed": True, "explainer": "llm"},
         {"latent": 1, "explanation": "the word volcano", "parsed": True, "explainer": "llm"}], schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("detection",), batch_size=4)
    table = score_partition(_examples(np.random.default_rng(0)), explanations, cfg, decode, seed=0, n_bins=4,
                            fuzz_threshold=0.0, client=ScriptedClient())
    path = tmp_path / "scores.parquet"
    write_parquet(table, path)
    with duckdb.connect() as con:
        scores = f"read_parquet('{path}')"
        nan = " + ".join(f"count(*) FILTER (isnan({c}))" for c in FLOAT_COLUMNS)
        assert con.execute(f"SELECT {nan} FROM {scores}").fetchone()[0] == 0
        assert con.execute(f"SELECT count(*) FILTER (isnan(b)) FROM {scores}, unnest(bin_accuracy) AS t(b)"
                           ).fetchone()[0] == 0
        rows = con.execute(f"SELECT latent, source, {', '.join(FLOAT_COLUMNS)}, bin_accuracy, n_examples, n_failures "
                           f"FROM {scores} ORDER BY latent, source").fetchall()
        # avg() over the column is the mean of the judged rows, not NaN.
        assert con.execute(f"SELECT avg(balanced_accuracy) FROM {scores}").fetchone()[0] == 0.5
    judged = {(0, "control"), (1, "real")}
    for latent, source, *floats, bins, n_examples, n_failures in rows:
        if (latent, source) in judged:  # every answer read: all defined but AUC (no log-probs) and bin 3 (empty)
            assert n_failures == 0 and n_examples == 12 and floats[0] == 0.5 and floats[-1] == 0.0
            assert floats[FLOAT_COLUMNS.index("auc")] is None
            assert bins == [1.0, 1.0, 1.0, None]
        else:  # nothing could be read: nothing is defined
            assert (n_examples, n_failures) == (0, 12)
            assert floats == [None] * len(FLOAT_COLUMNS) and bins == [None] * 4


def test_llm_scorers_through_llamacpp_read_every_answer_and_give_an_auc():
    """Detection and fuzzing with the real SmolLM2 on llama.cpp: the constrained answers all read, and the
    log-probs at the answer digits give every row an AUC."""
    pytest.importorskip("xllamacpp")
    from pathlib import Path

    from sae.config import LLMConfig
    from sae.llm import make_client

    explanations = pa.Table.from_pylist(
        [{"latent": 0, "explanation": "the word volcano", "parsed": True, "explainer": "llm"},
         {"latent": 1, "explanation": "mentions of a volcano", "parsed": True, "explainer": "llm"}], schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("detection", "fuzzing"), n_activating=3, n_silent=3, batch_size=6)
    client = make_client(LLMConfig(runtime="llamacpp", device="cpu", batch_size=2), Path("unused"))
    try:
        table = score_partition(_examples(np.random.default_rng(0)), explanations, cfg, decode, seed=0, n_bins=3,
                                fuzz_threshold=0.0, client=client)
    finally:
        client.close()
    assert table.num_rows == 8
    for row in table.to_pylist():
        assert row["n_failures"] == 0 and row["n_examples"] == 6, row
        assert row["auc"] is not None and 0.0 <= row["auc"] <= 1.0, row


def test_llm_n_latents_caps_the_latents_the_scorer_llm_judges_and_embedding_scores_all():
    from sae.embedding import Embedder

    explanations = pa.Table.from_pylist(
        [{"latent": latent, "explainer": "llm", "explanation": "the word volcano", "parsed": True}
         for latent in (0, 1)], schema=EXPLANATIONS)
    cfg = ScoreConfig(scorers=("detection", "embedding"), batch_size=4, llm_n_latents=1)
    table = score_partition(_examples(np.random.default_rng(0)), explanations, cfg, decode, seed=0, n_bins=4,
                            fuzz_threshold=0.0, client=ScriptedClient(), embedder=Embedder())
    latents_of = {scorer: {r["latent"] for r in table.to_pylist() if r["scorer"] == scorer}
                  for scorer in ("detection", "embedding")}
    assert latents_of["embedding"] == {0, 1} and len(latents_of["detection"]) == 1
    # The judged latent keeps its control, another latent's explanation.
    (judged,) = latents_of["detection"]
    sources = {r["source"] for r in table.to_pylist() if r["scorer"] == "detection"}
    assert sources == {"real", "control"} and judged in (0, 1)

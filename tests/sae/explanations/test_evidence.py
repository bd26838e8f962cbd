"""The evidence of a latent (its commonest activating tokens over every firing, and what it promotes) through the
real query on Parquet, the token baseline built from it, and `backend: tokens` explaining with no model."""

import dataclasses

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from sae.config import ExplainConfig, LLMConfig, PromptConfig
from sae.explanations.evidence import TokenStats, baseline_explanation, merge_forms, token_stats
from sae.explanations.explainer import SCHEMA, build_prompts, explain_partition
from sae.lake import Lake
from sae.lake.sql import run_query
from sae.lineage import Provenance
from sae.saes.logits import SCHEMA as LOGITS

from .test_explainer import train_examples

VOCAB = {0: " who", 1: " which", 2: "Who", 3: " the", 4: " whom", 5: ",", 6: " was"}


def decode(ids):
    return [VOCAB[i] for i in ids]


def lake_files(tmp_path):
    """Two contexts and the firings of two latents: latent 0 on who / which / Who / whom (and faintly on
    "the"), latent 1 on "the" only."""
    contexts = pa.table({"ctx_id": pa.array([0, 1], pa.int32()),
                         "tokens": pa.array([[0, 3, 1, 3, 2, 5], [4, 3, 0, 6, 0, 3]], pa.list_(pa.int32()))})
    firings = [(0, 0, 0, 8.0), (0, 0, 2, 6.0), (0, 0, 4, 7.0), (0, 1, 0, 5.0), (0, 1, 2, 9.0), (0, 1, 4, 8.0),
               (0, 0, 1, 0.5), (0, 0, 3, 0.4),  # faint firings on " the": below a quarter of the peak
               (1, 0, 1, 3.0), (1, 0, 3, 2.0), (1, 1, 1, 3.0), (1, 1, 5, 2.5)]
    latents = pa.table({"latent": pa.array([f[0] for f in firings], pa.int32()),
                        "ctx_id": pa.array([f[1] for f in firings], pa.int32()),
                        "pos": pa.array([f[2] for f in firings], pa.int16()),
                        "act": pa.array([f[3] for f in firings], pa.float16())})
    pq.write_table(contexts, tmp_path / "contexts.parquet")
    pq.write_table(latents, tmp_path / "latents.parquet")
    return [str(tmp_path / "latents.parquet")], [str(tmp_path / "contexts.parquet")]


def test_frequent_tokens_count_strong_firings_over_the_corpus_and_merge_forms_of_one_word(tmp_path):
    latents, contexts = lake_files(tmp_path)
    with duckdb.connect() as con:
        rows = run_query(con, "latent_top_tokens", latents=latents, contexts=contexts, n=20, min_fraction=0.25).pl()
    assert rows.filter(rows["latent"] == 0).select("token", "n", "total").rows() == [(0, 3, 6), (1, 1, 6), (2, 1, 6),
                                                                                       (4, 1, 6)]
    logits = pa.Table.from_pylist([{"latent": 0, "top_ids": [6, 5, 6], "top_tokens": [" was", ",", "was"],
                                    "top_values": [3.0, 2.0, 1.0], "bottom_ids": [], "bottom_tokens": [],
                                    "bottom_values": []}], schema=LOGITS)
    stats = token_stats(rows, logits, decode)
    # " who" and "Who" are one word: 3 + 1 firings, shown in the commoner form.
    assert stats[0] == TokenStats((("who", 4), ("which", 1), ("whom", 1)), 6, ("was", ","))
    assert stats[1] == TokenStats((("the", 4),), 4, ())  # no logits row for it: nothing promoted
    assert baseline_explanation(stats[0]) == 'the token "who" (before "was", ",")'  # "who" alone covers half
    assert baseline_explanation(stats[1]) == 'the token "the"'
    assert merge_forms([("\n", 2), (" ", 1)]) == [("⏎", 2), ("␣", 1)]  # line breaks and spaces stay visible


def test_the_baseline_names_tokens_until_they_cover_half_the_firings():
    spread = TokenStats((("a", 20), ("b", 15), ("c", 10), ("d", 5)), 100, ())
    assert baseline_explanation(spread) == 'the tokens "a", "b", "c", "d"'  # 45 after three, 50 after four
    diffuse = TokenStats(tuple((f"t{i}", 2) for i in range(9)), 100, ())
    assert baseline_explanation(diffuse).count('"') == 10  # at most five tokens


def test_the_prompt_shows_the_evidence_after_the_excerpts():
    stats = {0: TokenStats((("who", 40), ("which", 12)), 60, ("was", "is"))}
    cfg = ExplainConfig(n_examples=2, prompt=PromptConfig(frequent_tokens=1, promoted_tokens=2))
    messages = build_prompts(train_examples(), [0], cfg, lambda ids: [f" w{i}" for i in ids], stats)[0].request.messages
    last = messages[-1][1].splitlines()
    assert last[-2:] == ['Fires most on: "who" 40 times', 'Makes likely next: "was", "is"']
    assert messages[1][1].splitlines()[-2].startswith("Fires most on:")  # the worked examples show it too
    plain = build_prompts(train_examples(), [0], dataclasses.replace(cfg, prompt=PromptConfig(
        frequent_tokens=0, promoted_tokens=0)), lambda ids: [f" w{i}" for i in ids], stats)[0].request.messages
    assert "Fires most on" not in plain[-1][1] and "Fires most on" not in plain[0][1]


def test_backend_tokens_explains_every_latent_that_fired_without_a_model(tmp_path):
    coverage = pa.table({"latent": [0, 1, 2], "n_train": [6, 6, 0], "complete": [True, True, False]})
    stats = {0: TokenStats((("who", 4),), 6, ()), 1: TokenStats((("the", 4),), 4, ()),
             2: TokenStats((("x", 1),), 1, ())}
    cfg = ExplainConfig(llm=LLMConfig(backend="tokens"))
    table = explain_partition(Lake(tmp_path / "lake"), "layers.1", "x", train_examples(), coverage, cfg, None,
                              decode, 0, Provenance("explanations", "layers.1|x", "fp", "1", {}, {}), stats=stats)
    assert table.schema.remove_metadata() == SCHEMA
    rows = table.to_pylist()
    assert [(r["latent"], r["explainer"], r["explanation"]) for r in rows] == [
        (0, "tokens", 'the token "who"'), (1, "tokens", 'the token "the"')]  # latent 2 has no train examples
    assert all(r["parsed"] and r["backend"] == "tokens" and r["prompt_tokens"] == 0 for r in rows)
    assert rows[0]["completion"] == rows[0]["explanation"] and rows[0]["attempts"] == 1

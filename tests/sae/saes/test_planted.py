"""Planted latents on the real tokenizer and corpus: they fire exactly where their families' words are, with
graded strength, and flow through latent_stats and examples like any variant."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae.config import ConfigError, PlantedConfig, PlantedFamily, parse_config
from sae.corpus.stage import load_context_tokens
from sae.examples.stage import build_examples
from sae.lake import Lake
from sae.latents.stage import cache_latents, compute_latent_stats
from sae.models import load_tokenizer
from sae.saes.planted import MIN_FACTOR, define_planted
from sae.saes.stage import load_planted, measure_quality
from tests.conftest import build_planted_lake

FAMILIES = [{"name": "digits", "words": list("0123456789"), "explanation": "digits"},
            {"name": "articles", "words": ["a", "an"], "explanation": "the articles a and an", "strength": 4.0},
            {"name": "parentheses", "words": ["(", ")"], "explanation": "parentheses"}]


@pytest.fixture(scope="module")
def planted_lake(tmp_path_factory, converted_model):
    cfg = build_planted_lake(tmp_path_factory.mktemp("planted"), converted_model, FAMILIES)
    return cfg, cache_latents(cfg, [("layers.1", "planted")], progress=False)


def reference_latents(cfg) -> pa.Table:
    """Computed here from the contexts' tokens and the families, token by token."""
    tokenizer = load_tokenizer(cfg.model, Lake(cfg.lake).root)
    latent_of = {word: latent for latent, family in enumerate(FAMILIES) for word in family["words"]}
    tokens = load_context_tokens(cfg)[0 : load_context_tokens(cfg).shape[0]]
    rows = [(latent_of[text.strip().lower()], ctx, pos)
            for ctx, ids in enumerate(tokens) for pos, text in enumerate(tokenizer.batch_decode([[i] for i in ids]))
            if text.strip().lower() in latent_of]
    return pa.table({name: list(column) for name, column in zip(("latent", "ctx_id", "pos"), zip(*rows))})


def test_planted_latents_fire_exactly_where_defined(planted_lake):
    cfg, report = planted_lake
    lake = Lake(cfg.lake)
    files = lake.files("latents", "layers.1", "planted")
    order = [("latent", "ascending"), ("ctx_id", "ascending"), ("pos", "ascending")]
    stored = pa.concat_tables(pq.read_table(f) for f in files).sort_by(order)
    expected = reference_latents(cfg).sort_by(order)
    assert expected.num_rows > 100  # every family fires in the tiny corpus
    assert set(expected.column("latent").to_pylist()) == {0, 1, 2}
    assert stored.select(["latent", "ctx_id", "pos"]).cast(expected.schema).equals(expected)
    # Each file sorted by latent like any latents file; graded: many values, between MIN_FACTOR and 1 x strength.
    assert all((np.diff(pq.read_table(f).column("latent").to_numpy()) >= 0).all() for f in files)
    latents = stored.column("latent").to_numpy()
    acts = stored.column("act").to_numpy().astype(np.float64)
    strength = np.array([1.0, 4.0, 1.0])[latents]
    assert (acts >= MIN_FACTOR * strength * 0.999).all() and (acts <= strength * 1.001).all()
    assert len(np.unique(acts[latents == 1])) > 50
    assert report.tokens == cfg.n_tokens and report.chunks_computed == 4


def test_planted_rerun_gives_the_same_rows(planted_lake):
    cfg, _ = planted_lake
    lake = Lake(cfg.lake)
    before = pa.concat_tables(pq.read_table(f) for f in lake.files("latents", "layers.1", "planted"))
    cache_latents(cfg, [("layers.1", "planted")], progress=False)
    assert pa.concat_tables(pq.read_table(f) for f in lake.files("latents", "layers.1", "planted")).equals(before)


def test_planted_stats_examples_and_quality(planted_lake):
    cfg, _ = planted_lake
    stats = compute_latent_stats(cfg, "layers.1", "planted")
    assert stats.num_rows == 3 and not any(stats.column("dead").to_pylist())
    examples, covered, _ = build_examples(cfg, "layers.1", "planted")
    kinds = set(examples.column("kind").to_pylist())
    assert {"top", "quantile", "random", "neighbour"} <= kinds
    # Hard negatives come from the other families: a window where another family peaks and this one is silent.
    neighbour = [r for r in examples.to_pylist() if r["kind"] == "neighbour"]
    assert neighbour and all(max(r["acts"]) == 0 for r in neighbour)
    assert load_planted(cfg, "layers.1", "planted").neighbours(2).column("neighbour").to_pylist() == [1, 2, 2, 0, 0, 1]
    (row,) = measure_quality(cfg, [("layers.1", "planted")])
    assert row["architecture"] == "planted" and row["num_latents"] == 3
    assert row["fvu"] is None and row["ce_increase"] is None


def test_default_families_are_whole_tokens_of_the_builtin_model(tiny_config):
    tokenizer = load_tokenizer(tiny_config.model, Lake(tiny_config.lake).root)
    planted = define_planted(PlantedConfig(), tokenizer, seed=0)
    assert planted.num_latents == 8 and all(planted.token_ids)
    # " Who", "who" and "Who" are all the word "who".
    assert len(planted.token_ids[0]) > 4


def test_a_word_that_is_no_single_token_is_refused(tiny_config):
    tokenizer = load_tokenizer(tiny_config.model, Lake(tiny_config.lake).root)
    odd = PlantedConfig((PlantedFamily("odd", ("zyxqwvk",), "nonsense"),))
    with pytest.raises(ValueError, match="'zyxqwvk' on its own"):
        define_planted(odd, tokenizer, seed=0)


@pytest.mark.parametrize("planted, message", [
    ({"families": []}, "families is empty"),
    ({"families": [FAMILIES[0], {**FAMILIES[1], "words": ["a", "1"]}]}, "'1' is in families 'digits' and 'articles'"),
    ({"families": [{**FAMILIES[0], "strength": 0}]}, "strength must be positive"),
    ({"families": [FAMILIES[0], FAMILIES[0]]}, "a family name is used twice"),
])
def test_bad_planted_configs_are_refused(planted, message):
    raw = {"layers": [{"hookpoint": "layers.1"}], "saes": [{"name": "p", "planted": planted}]}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)

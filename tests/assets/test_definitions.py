"""The whole code location loads, from the demo config and from a tiny one."""

import dagster as dg

from assets.definitions import build_definitions
from sae.config import DEFAULT_CONFIG, load_config

EXPECTED = {"contexts", "activations", "saes", "sae_quality", "sae_quality_summary", "latents", "latent_stats",
            "examples", "explanations", "scores", "score_summary", "explanation_embeddings", "similarity",
            "hf_export"}


def test_demo_definitions_load_with_every_asset_and_partition():
    defs = build_definitions(str(DEFAULT_CONFIG))
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == EXPECTED
    cfg = load_config(DEFAULT_CONFIG)
    latents = graph.get(dg.AssetKey("latents"))
    assert len(latents.partitions_def.get_partition_keys()) == len(cfg.hookpoints) * len(cfg.saes)
    activations = graph.get(dg.AssetKey("activations"))
    assert activations.partitions_def.get_partition_keys() == cfg.hookpoints
    for key in ("activations", "latents", "saes", "sae_quality", "explanations", "scores"):
        assert graph.get(dg.AssetKey(key)).pools == {"gpu"}


def test_definitions_follow_the_config_in_the_environment(monkeypatch, tiny_config_path):
    monkeypatch.setenv("SAELAKE_CONFIG", str(tiny_config_path))
    defs = build_definitions()
    keys = defs.resolve_asset_graph().get(dg.AssetKey("saes")).partitions_def.get_partition_keys()
    assert sorted(keys) == ["layers.1|topk-x2", "layers.3|topk-x2"]

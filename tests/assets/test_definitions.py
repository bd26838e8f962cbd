"""The whole code location loads, from the demo config and from a tiny one."""

import dagster as dg

from assets.definitions import build_definitions
from sae.config import DEFAULT_CONFIG, load_config

EXPECTED = {"contexts", "activations", "saes", "sae_quality", "sae_quality_summary", "latents", "latent_stats",
            "latent_logits", "examples", "explanations", "scores", "score_summary", "explanation_embeddings", "similarity",
            "hf_export"}


def test_demo_definitions_load_with_every_asset_and_partition():
    defs = build_definitions(str(DEFAULT_CONFIG))
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == EXPECTED | {f"settings/{name}" for name in EXPECTED}
    for name in EXPECTED:
        node = graph.get(dg.AssetKey(name))
        assert dg.AssetKey(["settings", name]) in node.parent_keys and node.code_version, name
        source = graph.get(dg.AssetKey(["settings", name]))
        assert source.is_observable and source.partitions_def == node.partitions_def, name
    checks = {key.name for key in graph.asset_check_keys}
    assert checks == {"readable_parts", "bytes_per_non_zero", "train_test_disjoint", "silent_windows_silent",
                      "parse_failure_rate", "names_planted_words", "controls_near_chance", "scorers_calibrated"}
    assert {job.name for job in defs.resolve_all_job_defs()} >= {
        "corpus", "dense_activations", "layer_sae_partitions", "summaries_and_export"}
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

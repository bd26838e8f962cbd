"""Lineage: which partitions a config change invalidates, the staleness messages, and the plan of a run.

A "finished lake" here is a lake whose every partition holds the provenance the config gives it (what the
stages write on commit); no model runs, so these tests check the bookkeeping alone. The stages themselves
write and check provenance in tests/assets/test_pipeline.py.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

from sae.checks import ERROR, WARN, CheckOutcome, record
from sae.config import parse_config
from sae.lake import Lake
from sae.lineage import Lineage, StaleDataError, layer_sae_keys, plan, require_fresh, split_key

RAW = {
    "n_tokens": 4096, "ctx_len": 64,
    "layers": [{"hookpoint": "layers.1"}, {"hookpoint": "layers.3"}],
    "saes": [{"name": "topk-x2", "train": {"expansion_factor": 2, "k": 8}},
             {"name": "topk-x4", "train": {"expansion_factor": 4, "k": 8}},
             {"name": "neurons", "neurons": {"k": 8}}],
}


def config(tmp_path, **changes):
    raw = copy.deepcopy(RAW)
    raw["lake"] = str(tmp_path / "lake")
    for path, value in changes.items():
        target = raw
        *parents, leaf = path.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        target[leaf] = value
    return parse_config(raw)


def finish(cfg) -> Lake:
    """Write, for every partition the config asks for, the provenance a stage would commit with it."""
    lake = Lake(cfg.lake)
    lineage = Lineage(cfg)
    for asset, key in lineage.every_partition():
        staging = lake.open_staging(asset, *split_key(key))
        lake.commit(staging, asset, *split_key(key), provenance=lineage.provenance(asset, key))
    return lake


def to_build(cfg, lake) -> set[tuple[str, object]]:
    return {(s.asset, s.key) for s in plan(cfg, lake) if s.status != "fresh"}


PER_PARTITION = ("saes", "sae_quality", "latent_logits", "latents", "latent_stats", "examples", "explanations", "scores",
                 "explanation_embeddings")
SUMMARIES = {("sae_quality_summary", None), ("score_summary", None), ("similarity", None), ("hf_export", None)}


def test_a_finished_lake_has_nothing_to_do(tmp_path):
    cfg = config(tmp_path)
    lake = finish(cfg)
    assert to_build(cfg, lake) == set()
    assert {s.status for s in plan(cfg, lake)} == {"fresh"}


def test_an_empty_lake_builds_everything(tmp_path):
    cfg = config(tmp_path)
    states = plan(cfg, Lake(cfg.lake))
    assert {s.status for s in states} == {"missing"}
    assert len(states) == 1 + 2 + 6 * len(PER_PARTITION) + 4


def test_n_tokens_invalidates_everything_but_the_neuron_codecs(tmp_path):
    lake = finish(config(tmp_path))
    changed = config(tmp_path, n_tokens=8192)
    # The model's own neurons and what they write: no tokens read.
    neurons = {(a, (h, "neurons")) for a in ("saes", "latent_logits") for h in ("layers.1", "layers.3")}
    assert to_build(changed, lake) == {(a, k) for a, k in Lineage(changed).every_partition()} - neurons


def test_one_sae_k_invalidates_that_variant_and_the_summaries(tmp_path):
    lake = finish(config(tmp_path))
    changed = config(tmp_path, **{"saes.1.train.k": 16})  # topk-x4
    expected = {(a, (h, "topk-x4")) for a in PER_PARTITION for h in ("layers.1", "layers.3")} | SUMMARIES
    assert to_build(changed, lake) == expected
    stale = {s.label: s.reasons for s in plan(changed, lake) if s.status == "stale"}
    assert stale["saes[layers.1|topk-x4]"] == ("sae.train.k: 8 -> 16",)
    assert stale["latents[layers.1|topk-x4]"] == ("saes[layers.1|topk-x4]: sae.train.k: 8 -> 16",)
    assert stale["hf_export"] == ("saes[layers.1|topk-x4]: sae.train.k: 8 -> 16",
                                  "saes[layers.3|topk-x4]: sae.train.k: 8 -> 16")


def test_the_prompt_invalidates_explanations_and_downstream_only(tmp_path):
    lake = finish(config(tmp_path))
    changed = config(tmp_path, **{"explain.prompt.show_activations": True})
    downstream = ("explanations", "scores", "explanation_embeddings")
    summaries = SUMMARIES - {("sae_quality_summary", None)}
    expected = {(a, k) for a in downstream for k in layer_sae_keys(changed)} | summaries
    assert to_build(changed, lake) == expected


def test_throughput_settings_change_nothing(tmp_path):
    lake = finish(config(tmp_path))
    changed = config(tmp_path, **{"explain.llm.batch_size": 3, "explain.batch_latents": 7, "model.device": "cpu"})
    assert to_build(changed, lake) == set()


def test_adding_a_variant_builds_only_it_and_the_summaries(tmp_path):
    lake = finish(config(tmp_path))
    raw_saes = RAW["saes"] + [{"name": "topk-x8", "train": {"expansion_factor": 8, "k": 8}}]
    changed = config(tmp_path, saes=raw_saes)
    expected = {(a, (h, "topk-x8")) for a in PER_PARTITION for h in ("layers.1", "layers.3")} | SUMMARIES
    assert to_build(changed, lake) == expected


def test_select_partition_and_force(tmp_path):
    cfg = config(tmp_path)
    lake = finish(cfg)
    forced = plan(cfg, lake, select=["examples+"], partitions=["layers.3|neurons"], force=True)
    assert {(s.asset, s.key) for s in forced if s.key is not None} == {
        (a, ("layers.3", "neurons")) for a in ("examples", "explanations", "scores", "explanation_embeddings")}
    assert all(s.status == "stale" and s.reasons == ("--force",) for s in forced)
    by_sae = plan(cfg, lake, select=["latents"], partitions=["topk-x2"])
    assert {s.key for s in by_sae} == {("layers.1", "topk-x2"), ("layers.3", "topk-x2")}
    with pytest.raises(ValueError, match="unknown asset 'latent'"):
        plan(cfg, lake, select=["latent"])


def test_reading_a_stale_upstream_names_it_the_cause_and_the_command(tmp_path):
    finish(config(tmp_path))
    changed = config(tmp_path, **{"saes.1.train.k": 16})
    require_fresh(changed, "latents", ("layers.1", "topk-x2"))  # another variant: still fresh
    with pytest.raises(StaleDataError) as err:
        require_fresh(changed, "latents", ("layers.1", "topk-x4"))
    assert str(err.value) == (
        "`latents` for layers.1|topk-x4 is stale (saes[layers.1|topk-x4]: sae.train.k: 8 -> 16): "
        "refresh it with `saelake run` (which redoes only what is missing or stale) or "
        "`saelake run --select latents --partition 'layers.1|topk-x4'`")
    missing = dataclasses.replace(changed, lake=str(tmp_path / "elsewhere"))
    with pytest.raises(StaleDataError, match=r"`contexts` is missing from the lake .*elsewhere"):
        require_fresh(missing, "contexts")


def test_a_failed_error_check_blocks_readers_and_a_warning_does_not(tmp_path):
    cfg = config(tmp_path)
    lake = finish(cfg)
    key = ("layers.1", "topk-x2")
    fingerprint = Lineage(cfg).fingerprint("examples", key)
    record(lake, "examples", key, fingerprint, [CheckOutcome("bytes", False, WARN, "large")])
    require_fresh(cfg, "examples", key)
    record(lake, "examples", key, fingerprint, [CheckOutcome("train_test_disjoint", False, ERROR, "3 overlaps")])
    with pytest.raises(StaleDataError, match=r"failed its data check train_test_disjoint \(3 overlaps\)"):
        require_fresh(cfg, "examples", key)
    # A rebuilt partition has another fingerprint: the old outcome no longer applies to it.
    record(lake, "examples", key, "0" * 16, [CheckOutcome("train_test_disjoint", False, ERROR, "old")])
    require_fresh(cfg, "examples", key)

"""Exporting the lake as a Hugging Face dataset: a synthetic lake with the real table schemas is exported and
read back with the real `datasets.load_dataset` (offline, private cache); pushing is tested with only the Hub
API replaced."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import datasets
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sae.comparison.variants import PAIRS_SCHEMA
from sae.config import parse_config
from sae.examples.selection import WINDOW_SCHEMA
from sae.explanations.explainer import SCHEMA as EXPLANATIONS_SCHEMA
from sae.export import dataset as export
from sae.export.dataset import CardInfo, MissingTokenError, export_dataset, push_dataset, resolve_token
from sae.lake import Lake, write_parquet
from sae.saes.logits import SCHEMA as LOGITS_SCHEMA
from sae.scoring.calibration import SCHEMA as CALIBRATION_SCHEMA
from sae.scoring.metrics import PRIMARY_METRIC
from sae.scoring.scorers import SCHEMA as SCORES_SCHEMA

LAYERS = ("layers.1", "layers.3")
SAES = ("topk-x2", "neurons")
LATENTS = (0, 1, 2)  # latent 2's answer could not be parsed: it has no scores
# Which explainers wrote which latents: the LLM every one, the token baseline latent 0 only.
EXPLAINED = [(latent, "llm") for latent in LATENTS] + [(0, "tokens")]
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)
TOKEN = "hf_secretTEST123"
EXAMPLE_SCHEMA = WINDOW_SCHEMA.append(pa.field("tokens", pa.list_(pa.int32()))).append(
    pa.field("acts", pa.list_(pa.float32())))
CARD = CardInfo(model="smollm2-135m-instruct", corpus="wikipedia-sample", n_tokens=4096, ctx_len=64,
                layers=list(LAYERS), saes=[("topk-x2", "TopK SAE, x2, k = 8"), ("neurons", "MLP neurons")],
                explainer="local:smollm2-135m-instruct", prompt_versions=["abc123"],
                scorers=["detection", "embedding"])


def score(layer: str, sae: str, latent: int, scorer: str, source: str, explainer: str = "llm") -> float:
    """A distinct, exactly representable score per cell, so pivoted values can be checked exactly."""
    return (LAYERS.index(layer) * 8 + SAES.index(sae) * 4 + latent * 2 + (source == "control")) / 32 + (
        0.5 if scorer == "embedding" else 0.0) + (1 / 64 if explainer == "tokens" else 0.0)


def partitioned(lake: Lake, table: str, layer: str, sae: str, rows: list[dict], schema: pa.Schema) -> None:
    folder = lake.partition(table, layer, sae)
    folder.mkdir(parents=True)
    write_parquet(pa.Table.from_pylist(rows, schema=schema), folder / "part-00000.parquet")


def single(lake: Lake, table: str, rows: list[dict], schema: pa.Schema | None = None) -> None:
    folder = lake.partition(table)
    folder.mkdir(parents=True)
    write_parquet(pa.Table.from_pylist(rows, schema=schema), folder / "part-00000.parquet")


def build_lake(root: Path, tables: tuple[str, ...] = export.CONFIGS, scorers=("detection", "embedding")) -> Lake:
    lake = Lake(root)
    for layer in LAYERS:
        for sae in SAES:
            explanations = [{
                "latent": latent, "explainer": explainer,
                "explanation": None if latent == 2 else f"{layer}/{sae}/{latent}",
                "parsed": latent != 2, "completion": f"Explanation: {layer}/{sae}/{latent}",
                "explainer_model": "smollm2", "backend": "local", "prompt_version": "abc123", "sampling": "{}",
                "examples_used": [{"ctx_id": 0, "start": 3}], "copied_example": None, "attempts": 1,
                "prompt_tokens": 100 + latent, "completion_tokens": 10, "latency_s": 0.5, "cached": False,
                "created_at": NOW,
            } for latent, explainer in EXPLAINED]
            partitioned(lake, "explanations", layer, sae, explanations, EXPLANATIONS_SCHEMA)
            if "scores" in tables:
                scores = [{
                    "latent": latent, "explainer": explainer, "scorer": scorer, "source": source,
                    "explanation_latent": latent, "balanced_accuracy": score(layer, sae, latent, scorer, source,
                                                                             explainer),
                    "f1": 0.25, "precision": 0.5, "recall": 0.5, "accuracy": 0.5,
                    "auc": None if scorer == "detection" else score(layer, sae, latent, scorer, source,
                                                                    explainer) - 0.25,
                    "bin_accuracy": [1.0, math.nan], "silent_accuracy": 0.5, "n_examples": 10, "n_activating": 5,
                    "n_failures": 1, "failed_answers": ["??"], "scorer_model": "smollm2",
                    "prompt_version": "v1", "created_at": NOW,
                } for latent, explainer in EXPLAINED if latent != 2 for scorer in scorers
                  for source in ("real", "control")]
                partitioned(lake, "scores", layer, sae, scores, SCORES_SCHEMA)
            if "examples" in tables:
                examples = [{"latent": latent, "split": split, "kind": "top", "bin": 0, "ctx_id": latent,
                             "start": 4, "peak_act": 2.0, "tokens": [latent, 7, 9], "acts": [0.0, 2.0, 0.5]}
                            for latent in (0, 1) for split in ("train", "test")]
                partitioned(lake, "examples", layer, sae, examples, EXAMPLE_SCHEMA)
            if "latent_stats" in tables:
                stats = pa.table({
                    "latent": pa.array(LATENTS, pa.int32()), "n_fired": pa.array([5, 3, 0], pa.int64()),
                    "n_contexts": pa.array([2, 1, 0], pa.int64()), "frequency": [5 / 4096, 3 / 4096, 0.0],
                    "max_act": pa.array([2.0, 1.0, 0.0], pa.float32()),
                    "mean_act": pa.array([1.0, 0.5, 0.0], pa.float32()),
                    "quantile_edges": pa.array([[0.1] * 9, [0.2] * 9, None], pa.list_(pa.float32())),
                    "dead": [False, False, True]})
                partitioned(lake, "latent_stats", layer, sae, stats.to_pylist(), stats.schema)
            if "latent_logits" in tables:
                logits = [{"latent": latent, "top_ids": [7, 9], "top_tokens": [" who", " which"],
                           "top_values": [2.0, 1.5], "bottom_ids": [3], "bottom_tokens": [" the"],
                           "bottom_values": [-1.0]} for latent in LATENTS]
                partitioned(lake, "latent_logits", layer, sae, logits, LOGITS_SCHEMA)
    if "score_summary" in tables:
        single(lake, "score_summary", [
            {"layer": layer, "sae": sae, "explainer": "llm", "scorer": scorer, "source": source, "n_latents": 2,
             "n_examples": 20,
             "n_failures": 2, "balanced_accuracy": 0.8 if source == "real" else 0.5, "balanced_accuracy_lo": 0.7,
             "balanced_accuracy_hi": 0.9, "f1": 0.25, "f1_lo": 0.25, "f1_hi": 0.25,
             "auc": None if scorer == "detection" else 0.9, "auc_lo": None, "auc_hi": None,
             "bin_accuracy": [1.0, None],
             **({"minus_tokens": 0.1, "minus_tokens_lo": 0.05, "minus_tokens_hi": 0.15}
                if (layer, sae, scorer, source) == ("layers.1", "topk-x2", "detection", "real") else {})}
            for layer in LAYERS for sae in SAES for scorer in scorers for source in ("real", "control")])
    if "scorer_calibration" in tables:
        # detection does not tell the true explanation from a wrong one; embedding does.
        single(lake, "scorer_calibration", [
            {"scorer": scorer, "scorer_model": "smollm2", "metric": PRIMARY_METRIC[scorer], "n_latents": 8,
             **{f"{name}{suffix}": value + {"": 0, "_lo": -0.05, "_hi": 0.05}[suffix]
                for name, value in (("true", true), ("explainer", 0.6), ("baseline", 0.7), ("wrong", 0.5))
                for suffix in ("", "_lo", "_hi")},
             "calibrated": calibrated, "applicable": True}
            for scorer, true, calibrated in (("detection", 0.52, False), ("embedding", 0.9, True))],
            CALIBRATION_SCHEMA)
    if "similarity" in tables:
        single(lake, "similarity", [{"layer_a": "layers.1", "sae_a": "topk-x2", "layer_b": "layers.3",
                                     "sae_b": "topk-x2", "method": "explanation_best", "latent_a": a,
                                     "latent_b": a, "similarity": 0.5} for a in (0, 1)], PAIRS_SCHEMA)
    if "similarity_summary" in tables:
        single(lake, "similarity_summary", [
            {"layer_a": "layers.1", "sae_a": "topk-x2", "layer_b": "layers.3", "sae_b": "topk-x2",
             "relation": "distant layers", "layer_distance": 2, "n_a": 2, "n_b": 2, "explanation_mean_best": 0.5,
             "explanation_frac_above": 0.0, "explanation_mean_optimal": 0.5}])
    return lake


def decode(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """`datasets` offline with a private cache; its flags are read at import, so the constants are patched."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def load(out: Path, config: str, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset(str(out), config, split="train", cache_dir=str(cache))


def card_header(out: Path) -> dict:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


EXPECTED_ROWS = {"explanations": 16, "examples": 16, "latent_stats": 12, "latent_logits": 12, "scores": 48,
                 "score_summary": 16, "scorer_calibration": 2, "similarity": 2, "similarity_summary": 1}


def test_every_configuration_loads_with_datasets_with_its_rows_and_columns(tmp_path, offline):
    build_lake(tmp_path / "lake")
    out = tmp_path / "export"
    counts = export_dataset(tmp_path / "lake", out, CARD, decode=lambda windows: [decode(w) for w in windows])
    assert counts == EXPECTED_ROWS
    assert (out / "data" / "explanations" / "train-00000-of-00001.parquet").exists()
    loaded = {config: load(out, config, offline) for config in export.CONFIGS}
    assert {config: ds.num_rows for config, ds in loaded.items()} == EXPECTED_ROWS

    explanations = loaded["explanations"]
    pivoted = [f"{s}_{m}" for s in ("detection", "embedding") for m in
               ("balanced_accuracy", "f1", "auc", "control_balanced_accuracy", "control_auc")]
    assert explanations.column_names == list(export.EXPLANATION_COLUMNS) + pivoted
    rows = {(r["layer"], r["sae"], r["latent"], r["explainer"]): r for r in explanations}
    assert set(rows) == {(layer, sae, *explained) for layer in LAYERS for sae in SAES for explained in EXPLAINED}
    known = rows[("layers.3", "neurons", 1, "llm")]
    assert known["explanation"] == "layers.3/neurons/1" and known["parsed"] and known["prompt_tokens"] == 101
    assert known["detection_balanced_accuracy"] == score("layers.3", "neurons", 1, "detection", "real")
    assert known["detection_control_balanced_accuracy"] == score("layers.3", "neurons", 1, "detection", "control")
    assert known["detection_auc"] is None and known["detection_control_auc"] is None  # no probabilities
    assert known["embedding_auc"] == score("layers.3", "neurons", 1, "embedding", "real") - 0.25
    assert known["embedding_control_auc"] == score("layers.3", "neurons", 1, "embedding", "control") - 0.25
    assert known["detection_f1"] == 0.25
    # Each explainer's row holds its own scores: the token baseline's beside the LLM's.
    baseline, llm = rows[("layers.3", "neurons", 0, "tokens")], rows[("layers.3", "neurons", 0, "llm")]
    assert baseline["detection_balanced_accuracy"] == score("layers.3", "neurons", 0, "detection", "real", "tokens")
    assert llm["detection_balanced_accuracy"] == score("layers.3", "neurons", 0, "detection", "real")
    unscored = rows[("layers.1", "topk-x2", 2, "llm")]
    assert unscored["explanation"] is None and not unscored["parsed"]
    assert all(unscored[column] is None for column in pivoted)

    examples = loaded["examples"]
    assert examples.column_names == ["layer", "sae", *EXAMPLE_SCHEMA.names, "text"]
    assert all(r["text"] == decode(r["tokens"]) for r in examples)
    assert examples[0]["tokens"] == [0, 7, 9] and examples[0]["acts"] == [0.0, 2.0, 0.5]
    assert loaded["latent_stats"].column_names[:3] == ["layer", "sae", "latent"]
    assert loaded["latent_logits"].column_names == ["layer", "sae", *LOGITS_SCHEMA.names]
    assert loaded["latent_logits"][0]["top_tokens"] == [" who", " which"]
    # The exported scores carry their scorer's calibration.
    assert loaded["scores"].column_names == ["layer", "sae", *SCORES_SCHEMA.names, "calibrated"]
    assert loaded["scores"][0]["failed_answers"] == ["??"]
    assert {(r["scorer"], r["calibrated"]) for r in loaded["scores"]} == {("detection", False), ("embedding", True)}
    assert loaded["similarity"].column_names == PAIRS_SCHEMA.names  # unpartitioned: stored as is
    assert "layer" in loaded["score_summary"].column_names and "relation" in loaded["similarity_summary"].column_names
    partitions = {(layer, sae) for layer in LAYERS for sae in SAES}
    assert {(r["layer"], r["sae"]) for r in loaded["latent_stats"]} == partitions


def test_the_card_header_parses_and_lists_every_configuration(tmp_path):
    build_lake(tmp_path / "lake")
    out = tmp_path / "export"
    export_dataset(tmp_path / "lake", out, CARD)
    header = card_header(out)
    assert header["license"] == "cc-by-sa-4.0" and header["pretty_name"] == "saelake explanations"
    assert {"interpretability", "sparse-autoencoders"} <= set(header["tags"])
    configs = {c["config_name"]: c for c in header["configs"]}
    assert set(configs) == set(export.CONFIGS)
    assert configs["explanations"]["default"] is True
    assert sum(bool(c.get("default")) for c in configs.values()) == 1
    assert configs["scores"]["data_files"] == [{"split": "train", "path": "data/scores/*.parquet"}]
    body = (out / "README.md").read_text().split("---\n", 2)[2]
    for fact in ("smollm2-135m-instruct", "wikipedia-sample", "4,096", "64 tokens", "`layers.3`",
                 "TopK SAE, x2, k = 8", "local:smollm2-135m-instruct", "abc123", "detection, embedding",
                 'load_dataset("path/to/this/folder", "explanations"', "`detection_control_auc`"):
        assert fact in body, fact
    # The summary table: real beside control with intervals; the embedding scorer shows its AUC.
    assert "| layers.1 | topk-x2 | detection | llm | balanced_accuracy | 2 | 0.800 [0.700, 0.900] | " \
           "0.500 [0.700, 0.900] | +0.100 [+0.050, +0.150] LLM better |" in body
    assert "| layers.3 | neurons | embedding | llm | auc | 2 | 0.900 | 0.900 | – |" in body
    assert "| `examples` | 16 |" in body and "| `explanations` (default) | 16 |" in body
    # The card says per scorer whether it was calibrated, before the scores.
    assert body.index("## Scorer calibration") < body.index("## Scores")
    assert "- detection (smollm2): UNCALIBRATED — its scores with the true explanation do not beat a wrong" in body
    assert "- embedding (smollm2): calibrated — auc with the true explanation 0.900 [0.850, 0.950]" in body
    assert "| detection | smollm2 | balanced_accuracy | 8 | 0.520 [0.470, 0.570] | 0.600 [0.550, 0.650] | " \
           "0.700 [0.650, 0.750] | 0.500 [0.450, 0.550] | UNCALIBRATED |" in body


def test_only_tables_in_the_lake_are_exported_and_explanations_are_required(tmp_path, offline):
    lake = build_lake(tmp_path / "lake", tables=())
    out = tmp_path / "export"
    assert export_dataset(lake.root, out, CARD) == {"explanations": 16}
    assert [c["config_name"] for c in card_header(out)["configs"]] == ["explanations"]
    assert load(out, "explanations", offline).column_names == list(export.EXPLANATION_COLUMNS)
    assert "no score summary" in (out / "README.md").read_text()
    assert "No scorer was calibrated" in (out / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="run the pipeline"):
        export_dataset(tmp_path / "empty-lake", tmp_path / "other", CARD)
    assert not (tmp_path / "other").exists()


def test_an_empty_table_is_left_out_and_empty_explanations_are_refused(tmp_path, offline):
    lake = build_lake(tmp_path / "lake", tables=())
    single(lake, "similarity", [], PAIRS_SCHEMA)
    assert export_dataset(lake.root, tmp_path / "export", CARD) == {"explanations": 16}
    assert load(tmp_path / "export", "explanations", offline).num_rows == 16
    empty = Lake(tmp_path / "empty")
    partitioned(empty, "explanations", "layers.1", "neurons", [], EXPLANATIONS_SCHEMA)
    with pytest.raises(ValueError, match="no rows"):
        export_dataset(empty.root, tmp_path / "export", CARD)
    assert (tmp_path / "export" / "README.md").exists()  # the earlier export is untouched


def test_card_info_describes_each_sae_variant_from_the_config():
    cfg = parse_config({
        "model": {"name": "org/model", "revision": "v2"}, "n_tokens": 8192, "ctx_len": 128,
        "corpus": {"source": "huggingface", "dataset": "org/corpus", "subset": "en"},
        "layers": [{"hookpoint": "layers.2"}, {"hookpoint": "layers.5"}],
        "saes": [{"name": "topk-x4", "train": {"expansion_factor": 4, "k": 16}},
                 {"name": "hub", "hub": "org/saes", "revision": "main"},
                 {"name": "local", "path": "/data/saes/{hookpoint}"},
                 {"name": "neurons", "neurons": {}}, {"name": "neurons-topk", "neurons": {"k": 32}},
                 {"name": "planted", "planted": {}}],
        "explain": {"llm": {"backend": "openai", "model": "gpt-x"}},
        "score": {"scorers": ["detection", "embedding"]},
    })
    card = export.card_info_from_config(cfg, ["p1"])
    assert (card.model, card.n_tokens, card.ctx_len) == ("org/model@v2", 8192, 128)
    assert card.layers == ["layers.2", "layers.5"] and card.explainer == "openai:gpt-x"
    assert card.prompt_versions == ["p1"] and card.scorers == ["detection", "embedding"]
    assert "org/corpus" in card.corpus and card.license == "cc-by-sa-4.0" and card.repo_id is None
    saes = dict(card.saes)
    assert list(saes) == ["topk-x4", "hub", "local", "neurons", "neurons-topk", "planted"]
    assert saes["planted"].startswith("planted: known-answer latents") and "relative_pronouns" in saes["planted"]
    assert "TopK" in saes["topk-x4"] and "expansion factor 4" in saes["topk-x4"] and "k = 16" in saes["topk-x4"]
    assert "org/saes" in saes["hub"] and "main" in saes["hub"]
    assert "/data/saes/{hookpoint}" in saes["local"]
    assert "neurons" in saes["neurons"] and "top" not in saes["neurons"] and "top 32" in saes["neurons-topk"]


def test_reexport_replaces_an_earlier_export_but_not_a_foreign_folder(tmp_path):
    lake = build_lake(tmp_path / "lake")
    out = tmp_path / "export"
    export_dataset(lake.root, out, CARD)
    (out / "stale.txt").write_text("from the first export")
    assert export_dataset(lake.root, out, CARD) == EXPECTED_ROWS
    assert not (out / "stale.txt").exists() and (out / export.MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "lake"]  # no temporary folder left behind

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_dataset(lake.root, foreign, CARD)
    assert (foreign / "notes.txt").read_text() == "keep me"
    export_dataset(lake.root, foreign, CARD, overwrite=True)
    assert not (foreign / "notes.txt").exists() and (foreign / "README.md").exists()
    with pytest.raises(ValueError, match="holds the lake"):
        export_dataset(lake.root, tmp_path, CARD, overwrite=True)
    assert lake.files("explanations")


def test_a_scorer_name_is_data_never_sql(tmp_path):
    """The pivot names its columns from the values (DuckDB's PIVOT), so no scorer name reaches the SQL text."""
    build_lake(tmp_path / "lake", tables=("scores",), scorers=("detection", "x; DROP TABLE y"))
    export_dataset(tmp_path / "lake", tmp_path / "export", CARD)
    columns = pq.read_schema(tmp_path / "export" / "data" / "explanations" / "train-00000-of-00001.parquet").names
    assert "x; DROP TABLE y_balanced_accuracy" in columns and "detection_auc" in columns
    assert columns.index("detection_auc") < columns.index("x; DROP TABLE y_auc")  # known scorers first


def test_explanation_free_and_correlation_scorers_are_pivoted_by_their_primary_metric(tmp_path):
    """The intruder reads no explanation (explainer `none`): its accuracy goes to every explainer's row of the
    latent; simulation is pivoted by its correlation."""
    lake = build_lake(tmp_path / "lake", tables=())
    rows = [{name: None for name in SCORES_SCHEMA.names} | {
        "latent": 0, "explainer": explainer, "scorer": scorer, "source": source, "n_examples": 3, "n_activating": 0,
        "n_failures": 0, "failed_answers": [], "scorer_model": "smollm2", "prompt_version": "v1", "created_at": NOW,
        "accuracy": 0.75 if source == "real" else 0.25, "correlation": 0.5 if source == "real" else 0.0}
        for explainer, scorer in (("none", "intruder"), ("llm", "simulation")) for source in ("real", "control")]
    for layer in LAYERS:
        for sae in SAES:
            partitioned(lake, "scores", layer, sae, rows, SCORES_SCHEMA)
    export_dataset(lake.root, tmp_path / "export", CARD)
    table = pq.read_table(tmp_path / "export" / "data" / "explanations" / "train-00000-of-00001.parquet")
    assert [c for c in table.column_names if c.startswith(("intruder", "simulation"))] == [
        "intruder_accuracy", "intruder_control_accuracy", "simulation_correlation", "simulation_control_correlation"]
    latent0 = {r["explainer"]: r for r in table.to_pylist() if (r["layer"], r["sae"], r["latent"]) ==
               ("layers.1", "neurons", 0)}
    assert {e: (r["intruder_accuracy"], r["intruder_control_accuracy"]) for e, r in latent0.items()} == {
        "llm": (0.75, 0.25), "tokens": (0.75, 0.25)}
    assert latent0["llm"]["simulation_correlation"] == 0.5 and latent0["tokens"]["simulation_correlation"] is None


def test_hive_like_folders_above_the_lake_add_no_columns(tmp_path):
    root = tmp_path / "run=7" / "lake"
    build_lake(root, tables=("examples",))
    export_dataset(root, tmp_path / "export", CARD)
    schema = pq.read_schema(tmp_path / "export" / "data" / "examples" / export.DATA_FILE)
    assert schema.names == ["layer", "sae", *EXAMPLE_SCHEMA.names]


# push --------------------------------------------------------------------------------------------------


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records create_repo / upload_folder instead of calling the Hub."""

    endpoint = "https://huggingface.co"

    def __init__(self, fail_with: str | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail_with = fail_with

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        if self.fail_with:
            raise RuntimeError(self.fail_with)

    def upload_folder(self, *args, **kwargs):
        self.calls.append(("upload_folder", args, kwargs))


@pytest.fixture
def exported(tmp_path) -> Path:
    build_lake(tmp_path / "lake", tables=())
    out = tmp_path / "export"
    export_dataset(tmp_path / "lake", out, CARD)
    return out


def test_push_creates_the_repo_and_uploads_the_folder_without_leaking_the_token(exported, monkeypatch, capsys,
                                                                               caplog):
    """Only the Hub API (the network) is replaced; token resolution and everything else run for real."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    api = RecordingApi()
    url = push_dataset(exported, "someone/sae-explanations", private=True, api=api)
    assert url == "https://huggingface.co/datasets/someone/sae-explanations"
    assert [name for name, _, _ in api.calls] == ["create_repo", "upload_folder"]
    (_, create_args, create), (_, _, upload) = api.calls
    assert create_args == ("someone/sae-explanations",)
    assert create["repo_type"] == "dataset" and create["exist_ok"] and create["private"] is True
    assert Path(upload["folder_path"]) == exported and upload["repo_id"] == "someone/sae-explanations"
    assert upload["repo_type"] == "dataset" and upload["commit_message"]
    # The token is handed over only as the token argument, and shows up nowhere else.
    assert create["token"] == TOKEN and upload["token"] == TOKEN
    others = [(name, args, {k: v for k, v in kwargs.items() if k != "token"}) for name, args, kwargs in api.calls]
    captured = capsys.readouterr()
    for text in (repr(others), captured.out, captured.err, caplog.text):
        assert TOKEN not in text


def test_a_hub_error_that_echoes_the_token_is_scrubbed(exported, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = RecordingApi(fail_with=f"401 Unauthorized for token {TOKEN}")
    with pytest.raises(RuntimeError) as caught:
        push_dataset(exported, "someone/sae-explanations", api=api)
    assert TOKEN not in str(caught.value) and "***" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_without_a_token_push_fails_before_any_hub_call(tmp_path, exported, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    constructed = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda **kwargs: constructed.append(kwargs))
    api = RecordingApi()
    with pytest.raises(MissingTokenError, match="HF_TOKEN.*hf auth login"):
        push_dataset(exported, "someone/sae-explanations", api=api)
    with pytest.raises(MissingTokenError):
        push_dataset(tmp_path / "not-even-exported", "someone/sae-explanations")
    assert api.calls == [] and constructed == []


def test_the_token_comes_from_the_argument_then_hf_token_then_the_stored_login(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_stored")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert resolve_token("hf_explicit") == "hf_explicit"
    assert resolve_token() == TOKEN
    monkeypatch.delenv("HF_TOKEN")
    assert resolve_token() == "hf_stored"
    monkeypatch.setenv("HF_TOKEN", "  ")
    assert resolve_token() == "hf_stored"


def test_without_an_api_the_hub_client_is_built_with_the_resolved_token(exported, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    built = []

    class FakeHfApi(RecordingApi):
        def __init__(self, token=None):
            super().__init__()
            built.append(self)
            self.token = token

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    push_dataset(exported, "someone/sae-explanations")
    assert len(built) == 1 and built[0].token == TOKEN
    assert [name for name, _, _ in built[0].calls] == ["create_repo", "upload_folder"]


def test_output_side_explanations_are_exported_as_explanations_with_their_intervention_scores(tmp_path):
    """The intervention scorer's output-side explanations (the `output_explanations` table, explainer llm-output)
    become rows of the `explanations` configuration, with their intervention accuracy pivoted in."""
    lake = build_lake(tmp_path / "lake", tables=())
    for layer in LAYERS:
        for sae in SAES:
            partitioned(lake, "output_explanations", layer, sae, [
                {"latent": 1, "explainer": "llm-output", "explanation": "makes it write about rivers",
                 "parsed": True, "created_at": NOW}], EXPLANATIONS_SCHEMA)
            partitioned(lake, "scores", layer, sae, [{name: None for name in SCORES_SCHEMA.names} | {
                "latent": 1, "explainer": "llm-output", "scorer": "intervention", "source": source,
                "n_examples": 8, "n_failures": 0, "failed_answers": [], "scorer_model": "smollm2",
                "prompt_version": "v1", "created_at": NOW, "accuracy": 0.875 if source == "real" else 0.5}
                for source in ("real", "control")], SCORES_SCHEMA)
    export_dataset(lake.root, tmp_path / "export", CARD)
    table = pq.read_table(tmp_path / "export" / "data" / "explanations" / "train-00000-of-00001.parquet")
    rows = [r for r in table.to_pylist() if r["explainer"] == "llm-output"]
    assert len(rows) == len(LAYERS) * len(SAES)
    assert {(r["explanation"], r["intervention_accuracy"], r["intervention_control_accuracy"]) for r in rows} == {
        ("makes it write about rivers", 0.875, 0.5)}

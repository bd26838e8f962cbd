"""End to end through Dagster on a tiny config, checked against a brute-force reference."""

import json
import re
from urllib.parse import urlsplit

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from assets.cli import main
from sae.config import load_config
from sae.lake import Lake
from sae.lake.access import open_readonly
from sae.lineage import StaleDataError, require_fresh
from sae.models import load_model

from ..conftest import write_config

pytestmark = pytest.mark.slow


def reference_top_activations(cfg, hookpoint: str, sae_folder, n: int = 3) -> dict[int, list[float]]:
    """Top activations per latent, from the model's own hidden states and the sparsify formula."""
    layer = int(hookpoint.split(".")[1])
    model = load_model(cfg.model, Lake(cfg.lake).root)
    table = pq.read_table(Lake(cfg.lake).files("contexts")[0])
    tokens = torch.tensor(table.column("tokens").to_pylist())
    with torch.no_grad():
        hidden = torch.cat([
            model(input_ids=tokens[i : i + 16], output_hidden_states=True).hidden_states[layer + 1]
            for i in range(0, len(tokens), 16)
        ])
    weights = load_file(sae_folder / "sae.safetensors")
    k = json.loads((sae_folder / "cfg.json").read_text())["k"]
    x = hidden.reshape(-1, hidden.shape[-1]).float()
    pre = torch.relu((x - weights["b_dec"]) @ weights["encoder.weight"].T + weights["encoder.bias"])
    values, _ = pre.topk(k, dim=-1)
    acts = torch.where(pre >= values[:, -1:], pre, torch.zeros_like(pre))
    top = acts.topk(n, dim=0).values.T  # [latents, n]
    return {latent: row.tolist() for latent, row in enumerate(top) if row[0] > 0}


SIZES = {"topk-x2": 2, "topk-x4": 4}
NEURONS = {"neurons": None, "neurons-topk": 8}
INTERMEDIATE = 1536  # SmolLM2-135M's MLP width
# Two latents per partition, few windows: the real offline SmolLM2 explains and scores them on CPU. The
# tiny lake's latents fire in few of its 64 contexts, so few windows per split leave some for testing.
SMALL_LLM_STAGES = {
    "examples": {"n_top": 3, "n_train_quantile": 3, "n_test": 6, "n_random": 6, "n_neighbour": 2},
    "explain": {"n_latents": 2, "n_examples": 6, "max_tokens": 32, "llm": {"batch_size": 8}},
    "score": {"n_activating": 3, "n_silent": 3, "batch_size": 6, "bootstrap": 200},
}
EXPLANATION_COLUMNS = ("explanation", "completion", "explainer_model", "backend", "prompt_version", "sampling",
                       "examples_used", "prompt_tokens", "completion_tokens", "latency_s", "created_at")
METRIC_COLUMNS = ("balanced_accuracy", "f1", "precision", "recall", "accuracy", "auc", "bin_accuracy",
                  "n_examples")


def test_saelake_run_materializes_every_table(tmp_path, converted_model, monkeypatch, capsys):
    config_path = write_config(tmp_path, converted_model, saes=[
        *({"name": name, "train": {"expansion_factor": x, "k": 8, "epochs": 3, "batch_size": 256}}
          for name, x in SIZES.items()),
        *({"name": name, "neurons": {"k": k}} for name, k in NEURONS.items()),
    ], **SMALL_LLM_STAGES)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster-home"))
    (tmp_path / "dagster-home").mkdir()
    assert main(["--config", str(config_path), "run"]) == 0
    assert "done in" in capsys.readouterr().out
    cfg = load_config(config_path)

    # The runs are recorded in the instance, with metadata a researcher can read in the UI.
    instance = dg.DagsterInstance.get()
    records = instance.get_run_records()
    assert [r.dagster_run.status for r in records] == [dg.DagsterRunStatus.SUCCESS] * 4
    assert [r.dagster_run.job_name for r in reversed(records)] == [
        "corpus", "dense_activations", "layer_sae_partitions", "summaries_and_export"]
    contexts_meta = instance.get_latest_materialization_event(dg.AssetKey("contexts")).asset_materialization.metadata
    assert contexts_meta["contexts"].value == cfg.n_tokens // cfg.ctx_len and "ctx_id" in contexts_meta["preview"].value
    # Per-partition metadata describes its own partition, not the run's.
    for hookpoint in cfg.hookpoints:
        for name in (*SIZES, *NEURONS):
            partition = dg.MultiPartitionKey({"layer": hookpoint, "sae": name})
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("latents"), asset_partitions=[str(partition)]), limit=1)
            meta = records.records[0].asset_materialization.metadata
            nnz = sum(pq.read_metadata(f).num_rows for f in Lake(cfg.lake).files("latents", hookpoint, name))
            assert meta["non_zeros"].value == nnz
            assert 0 < meta["bytes_per_non_zero"].value < 16
    summary = instance.get_latest_materialization_event(dg.AssetKey("sae_quality_summary")).asset_materialization
    assert summary.metadata["variants"].value == len(cfg.hookpoints) * (len(SIZES) + len(NEURONS))
    lake = Lake(cfg.lake)
    n_contexts = cfg.n_tokens // cfg.ctx_len

    with open_readonly(lake.root) as con:
        assert con.execute("SELECT count(*) FROM contexts").fetchone()[0] == n_contexts
        assert con.execute("SELECT min(len(tokens)), max(len(tokens)) FROM contexts").fetchone() == (cfg.ctx_len,) * 2
        per_layer = dict(con.execute("SELECT layer, count(*) FROM activations GROUP BY layer").fetchall())
        assert per_layer == {h: cfg.n_tokens for h in cfg.hookpoints}
        metrics = con.execute(
            "SELECT layer, sae, fvu, l0 FROM sae_metrics WHERE sae LIKE 'topk%' ORDER BY layer, sae").fetchall()
        assert [(m[0], m[1]) for m in metrics] == [(h, s) for h in cfg.hookpoints for s in SIZES]
        assert all(0 < m[2] < 1 and m[3] <= 8 for m in metrics)
        every_variant = sorted((h, s) for h in cfg.hookpoints for s in [*SIZES, *NEURONS])
        quality = con.execute(
            "SELECT layer, sae, ce_increase, ce_increase_mean_ablated, fvu FROM sae_quality ORDER BY ALL").fetchall()
        assert [(q[0], q[1]) for q in quality] == every_variant
        for layer, sae, increase, mean_increase, fvu in quality:
            assert fvu is not None and 0 <= fvu < 1, (layer, sae, fvu)
            if sae in SIZES:
                assert increase < mean_increase, (layer, sae)
        # Neurons: every neuron a latent; the top-k variant keeps exactly k per token.
        for hookpoint in cfg.hookpoints:
            dense, topk = (con.execute(f"SELECT count(*) FROM latents WHERE layer = '{hookpoint}' AND sae = '{n}'")
                           .fetchone()[0] for n in NEURONS)
            assert topk == cfg.n_tokens * NEURONS["neurons-topk"]
            assert cfg.n_tokens * 100 < dense < cfg.n_tokens * INTERMEDIATE
            stats = con.execute(f"SELECT count(*) FROM latent_stats WHERE layer = '{hookpoint}' AND sae = 'neurons'")
            assert stats.fetchone()[0] == INTERMEDIATE
        for hookpoint in cfg.hookpoints:
            for name, x in SIZES.items():
                where = f"layer = '{hookpoint}' AND sae = '{name}'"
                nnz = con.execute(f"SELECT count(*) FROM latents WHERE {where}").fetchone()[0]
                fired = con.execute(f"SELECT sum(n_fired), count(*) FROM latent_stats WHERE {where}").fetchone()
                assert fired == (nnz, 576 * x)
                assert nnz <= cfg.n_tokens * 8
            stored = {
                (latent, rank): act for latent, rank, act in con.execute(
                    "SELECT latent, row_number() OVER (PARTITION BY latent ORDER BY act DESC) AS rank, act "
                    f"FROM latents WHERE layer = '{hookpoint}' AND sae = 'topk-x2' QUALIFY rank <= 3"
                ).fetchall()
            }
            reference = reference_top_activations(cfg, hookpoint, lake.partition("saes", hookpoint, "topk-x2"))
            assert {latent for latent, rank in stored if rank == 1} == set(reference)
            for latent, top in reference.items():
                for rank, value in enumerate(top, 1):
                    if value > 0:
                        assert stored[(latent, rank)] == pytest.approx(value, rel=2e-2, abs=2e-2)
        # Examples: every latent that fires has a coverage row; train and test never share a context.
        for hookpoint in cfg.hookpoints:
            where = f"layer = '{hookpoint}' AND sae = 'topk-x2'"
            fired = con.execute(f"SELECT count(*) FROM latent_stats WHERE {where} AND NOT dead").fetchone()[0]
            assert con.execute(f"SELECT count(*) FROM example_coverage WHERE {where}").fetchone()[0] == fired
            shared = con.execute(
                f"SELECT count(*) FROM examples a JOIN examples b USING (layer, sae, latent, ctx_id) "
                f"WHERE a.{where.replace(' AND ', ' AND a.')} AND a.split = 'train' AND b.split = 'test' "
                "AND b.kind = 'quantile'").fetchone()[0]
            assert shared == 0
            kinds = dict(con.execute(f"SELECT kind, count(*) FROM examples WHERE {where} GROUP BY kind").fetchall())
            assert set(kinds) == {"top", "quantile", "random", "neighbour"}
            assert con.execute(f"SELECT min(len(tokens)), max(len(acts)) FROM examples WHERE {where}").fetchone() == (
                cfg.examples.window, cfg.examples.window)
    examples_meta = instance.get_latest_materialization_event(dg.AssetKey("examples")).asset_materialization.metadata
    assert "«" in examples_meta["preview"].value
    # Each file is sorted by latent, and the lake stays small.
    for path in lake.files("latents"):
        latents = pq.read_table(path, columns=["latent"]).column(0).to_numpy()
        assert np.all(np.diff(latents) >= 0)
    check_llm_stages(cfg, lake, instance)
    check_data_checks(cfg, lake, instance)
    check_a_damaged_part(config_path, lake, capsys)
    check_export(config_path, tmp_path / "export", cfg, lake, capsys)
    check_incremental_runs(config_path, cfg, lake, capsys)


def check_data_checks(cfg, lake, instance):
    """Every asset check ran and is recorded in the instance (the UI) and in the lake's `checks` table."""
    checks = {"latents": {"readable_parts", "bytes_per_non_zero"},
              "examples": {"train_test_disjoint", "silent_windows_silent"},
              "explanations": {"parse_failure_rate", "names_planted_words"}, "scores": {"controls_near_chance"}}
    for asset, names in checks.items():
        for name in names:
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(dg.AssetKey(asset), name)])[dg.AssetCheckKey(dg.AssetKey(asset), name)]
            assert record is not None, (asset, name)
    n_partitions = len(cfg.hookpoints) * len(cfg.saes)
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT asset, check_name, count(*), bool_and(passed) FROM "
                           f"read_parquet('{lake.root}/checks/**/*.parquet', hive_partitioning = true) "
                           "GROUP BY ALL").fetchall()
    found = {(asset, check): (n, passed) for asset, check, n, passed in rows}
    # score_summary's calibration check is one for the whole lake; the others run per partition.
    assert found.pop(("score_summary", "scorers_calibrated"))[0] == 1
    assert set(found) == {(a, n) for a, names in checks.items() for n in names}
    assert all(n == n_partitions for n, _ in found.values())
    # The error checks hold on data the pipeline made; the warnings may fire on a 135M explainer.
    for key in [("latents", "readable_parts"), ("examples", "train_test_disjoint"),
                ("examples", "silent_windows_silent")]:
        assert found[key][1], key


def check_a_damaged_part(config_path, lake, capsys):
    """A part damaged after the run: `saelake sql` says so in one message, `saelake check` names the file, and
    until it is repaired the stages refuse to read that partition (its error check blocks them)."""
    part = lake.files("latents", "layers.1", "topk-x4")[0]
    intact = part.read_bytes()
    capsys.readouterr()
    try:
        part.write_bytes(intact[: len(intact) // 2])
        assert main(["--config", str(config_path), "sql", "SELECT count(*) FROM latents"]) == 1
        assert "saelake check` names every damaged part" in capsys.readouterr().err
        assert main(["--config", str(config_path), "check", "--select", "latents"]) == 1
        out = capsys.readouterr().out
        assert "FAIL  latents[layers.1|topk-x4] readable_parts: 1 of" in out and str(part) in out
        assert out.count("FAIL") == 1
        with pytest.raises(StaleDataError, match=r"failed its data check readable_parts"):
            require_fresh(load_config(config_path), "latents", ("layers.1", "topk-x4"))
    finally:
        part.write_bytes(intact)
    assert main(["--config", str(config_path), "check", "--select", "latents"]) == 0
    require_fresh(load_config(config_path), "latents", ("layers.1", "topk-x4"))
    capsys.readouterr()


def check_incremental_runs(config_path, cfg, lake, capsys):
    """A second run on the finished lake does nothing; editing one SAE rebuilds only its partitions and the
    summaries, and leaves every other partition's files as they were."""
    capsys.readouterr()
    assert main(["--config", str(config_path), "run"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "  build" not in out and "[1/" not in out
    provenance = {path: path.stat().st_mtime_ns for path in lake.root.glob("**/_provenance.json")}
    config = yaml.safe_load(config_path.read_text())
    config["saes"][1]["train"]["k"] = 4  # topk-x4
    config_path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(config_path), "status"]) == 0
    status = capsys.readouterr().out
    assert "  build saes: 2 stale, 6 fresh" in status and "22 of 79 partitions to build" in status
    assert main(["--config", str(config_path), "run"]) == 0
    out = capsys.readouterr().out
    assert "  skip  contexts: 1 fresh" in out and "  skip  activations: 2 fresh" in out
    for asset in ("saes", "latents", "examples", "explanations", "scores"):
        assert f"  build {asset}: 2 stale, 6 fresh" in out, asset
    assert "sae.train.k: 8 -> 4" in out
    rebuilt = {path for path, mtime in provenance.items() if path.stat().st_mtime_ns != mtime}
    assert all("sae=topk-x4" in str(path) or "layer=" not in str(path) for path in rebuilt), rebuilt
    assert any("sae=topk-x4" in str(path) for path in rebuilt)
    assert not any(path.parent.name == "contexts" or "activations" in str(path) for path in rebuilt)


def check_llm_stages(cfg, lake, instance):
    """Explanations, scores, summary, embeddings and similarity, through the lake's views."""
    n_partitions = len(cfg.hookpoints) * len(cfg.saes)
    with open_readonly(lake.root) as con:
        rows = con.execute(f"SELECT layer, sae, latent, parsed, {', '.join(EXPLANATION_COLUMNS)} "
                           "FROM explanations WHERE explainer = 'llm'").fetchall()
        assert len(rows) == n_partitions * cfg.explain.n_latents
        for row in rows:
            assert row[3] is not None and all(value is not None for value in row[4 + (not row[3]):]), row
            assert row[7] == "local" and 0 < len(row[10]) <= cfg.explain.n_examples and row[11] > 0 and row[12] > 0
        assert con.execute("SELECT count(*) FROM explanations WHERE parsed AND explanation <> ''").fetchone()[0] > 0
        # The token baseline explains every latent with train examples; latent_logits covers every latent.
        assert con.execute("SELECT count(*) FROM explanations WHERE explainer = 'tokens'").fetchone()[0] == \
            con.execute("SELECT count(*) FROM example_coverage WHERE n_train > 0").fetchone()[0]
        assert con.execute("SELECT count(*) FROM latent_logits WHERE len(top_ids) = 0").fetchone()[0] == 0
        scored = con.execute(f"SELECT scorer, source, {', '.join(METRIC_COLUMNS)} FROM scores").fetchall()
        assert {(r[0], r[1]) for r in scored} == {(s, src) for s in cfg.score.scorers for src in ("real", "control")}
        auc = METRIC_COLUMNS.index("auc") + 2
        for row in scored:
            if row[-1] > 0:  # windows with a readable answer
                assert all(value is not None for i, value in enumerate(row[2:], 2) if i != auc), row
        # AUC needs both kinds of window, and for the LLM scorers log-probs at every answer digit.
        assert any(r[auc] is not None for r in scored if r[0] == "embedding")
        assert any(r[auc] is not None for r in scored if r[0] == "detection")
        summary = con.execute("SELECT scorer, source, n_latents, balanced_accuracy, balanced_accuracy_lo, "
                              "balanced_accuracy_hi FROM score_summary").fetchall()
        assert {(r[0], r[1]) for r in summary} == {(s, src) for s in cfg.score.scorers for src in ("real", "control")}
        assert all(r[4] <= r[3] <= r[5] for r in summary if r[3] is not None)  # NULL: no latent judged
        embedded = con.execute("SELECT count(*), min(len(embedding)) FROM explanation_embeddings").fetchone()
        assert embedded[0] == con.execute(
            "SELECT count(*) FROM explanations WHERE parsed AND explainer = 'llm'").fetchone()[0]
        assert embedded[1] == 384
        pairs = con.execute("SELECT count(*) FROM similarity_summary").fetchone()[0]
        assert pairs == n_partitions * (n_partitions - 1) // 2
        relations = {r[0] for r in con.execute("SELECT relation FROM similarity_summary").fetchall()}
        assert relations == {"same layer", "adjacent layers", "sae vs neurons"}
    for plot in ("score_histograms", "similarity_heatmap", "similarity_vs_layer_distance"):
        assert (lake.root / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    meta = instance.get_latest_materialization_event(dg.AssetKey("explanations")).asset_materialization.metadata
    assert "top_example" in meta["explanations"].value and "<<" in meta["explanations"].value
    check_latent_links(cfg, lake, meta["explanations"].value)
    meta = instance.get_latest_materialization_event(dg.AssetKey("score_summary")).asset_materialization.metadata
    assert "control" in meta["summary"].value and "data:image/png;base64" in meta["score_histograms"].value
    meta = instance.get_latest_materialization_event(dg.AssetKey("similarity")).asset_materialization.metadata
    assert "data:image/png;base64" in meta["heatmap"].value


def check_latent_links(cfg, lake, preview: str) -> None:
    """Each latent of the Dagster preview links into the browser at `browser_url`, and the page it names exists
    there: the browser app over this lake answers it with that latent's page."""
    from starlette.testclient import TestClient

    from sae.browser.app import create_app

    links = re.findall(r"\[(\d+)\]\(([^)]+)\)", preview)
    assert links, preview
    app = create_app(lake.root, cfg.model, cfg.score.embedder, cfg.score.embedder_device)
    with TestClient(app) as client:
        for latent, url in links:
            assert url.startswith(cfg.browser_url.rstrip("/") + "/latent/"), url
            page = client.get(urlsplit(url).path)
            assert page.status_code == 200 and f"latent {latent}" in page.text.lower(), url


def test_saelake_sql_is_read_only_and_prints_a_table(tmp_path, tiny_config, tiny_config_path, capsys):
    Lake(tiny_config.lake).root.mkdir(parents=True, exist_ok=True)
    assert main(["--config", str(tiny_config_path), "sql", "SELECT 41 + 1 AS answer"]) == 0
    assert "answer" in capsys.readouterr().out
    assert main(["--config", str(tiny_config_path), "sql", "CREATE TABLE t AS SELECT 1"]) == 1
    assert "read-only" in capsys.readouterr().err.lower()


def check_export(config_path, out_dir, cfg, lake, capsys):
    """`saelake export` writes a dataset folder that `datasets.load_dataset` reads, config by config."""
    import datasets

    assert main(["--config", str(config_path), "export", str(out_dir)]) == 0
    assert "explanations" in capsys.readouterr().out
    n_partitions = len(cfg.hookpoints) * len(cfg.saes)
    with open_readonly(lake.root) as con:
        expected = {table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    for table in ("examples", "latent_stats", "scores", "score_summary", "similarity",
                                  "similarity_summary", "explanations")}
        # One exported row per latent and explainer: the LLM's sample and the token baseline's every latent.
        assert con.execute("SELECT count(*) FROM explanations WHERE explainer = 'llm'").fetchone()[0] == \
            n_partitions * cfg.explain.n_latents
    for config, rows in expected.items():
        loaded = datasets.load_dataset(str(out_dir), config, split="train", cache_dir=str(out_dir.parent / "hf"))
        assert loaded.num_rows == rows, config
    loaded = datasets.load_dataset(str(out_dir), "explanations", split="train", cache_dir=str(out_dir.parent / "hf"))
    assert {"layer", "sae", "latent", "explanation", "detection_balanced_accuracy", "embedding_auc",
            "fuzzing_control_balanced_accuracy"} <= set(loaded.column_names)
    card = (out_dir / "README.md").read_text()
    assert "smollm2-135m-instruct" in card and "configs:" in card

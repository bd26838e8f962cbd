"""The whole tiny pipeline, `saelake run` through Dagster, once in this process and once with its heavy stages
(caching, selection, explanations, scoring) in shards on a real local Ray cluster of two worker processes: every
partition of every table holds the same rows, and the assets report their shards."""

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from assets.cli import main
from sae.config import load_config
from sae.lake import PROVENANCE_FILE, Lake

from ..conftest import write_config

pytestmark = pytest.mark.slow

LAYER, SAE = "layers.1", "topk-x2"
STAGES = {
    "layers": [{"hookpoint": LAYER}],
    "saes": [{"name": SAE, "train": {"expansion_factor": 2, "k": 8, "epochs": 2, "batch_size": 256}}],
    "examples": {"n_top": 3, "n_train_quantile": 3, "n_test": 6, "n_random": 6, "n_neighbour": 2},
    # The LLM one prompt at a time, so that its answers depend on the prompt alone, not on which prompts of
    # which shard share its batch; likewise one prompt per (latent, explainer, source) for detection.
    "explain": {"n_latents": 3, "n_examples": 6, "max_tokens": 16, "max_attempts": 1, "batch_latents": 1,
                "llm": {"batch_size": 1}},
    "score": {"scorers": ["detection", "embedding", "intruder"], "n_activating": 2, "n_silent": 2,
              "batch_size": 8, "intruder_questions": 1, "intruder_k": 2},
}
# What differs between two runs of the same work: when, how fast, and whether an answer came from the cache.
TIMING = {"created_at", "latency_s", "cached", "seconds"}
SHARDED = {"latents": "cached", "examples": "selected", "explanations": "explained", "scores": "scored"}


def partitions(lake: Lake) -> dict[str, list[dict]]:
    """Every committed partition of the lake (by its folder under the lake) with its rows, its part files read
    in name order and the timing columns left out."""
    found = {}
    for provenance in sorted(lake.root.glob(f"**/{PROVENANCE_FILE}")):
        folder = provenance.parent
        parts = sorted(folder.glob("*.parquet"))
        if parts:
            rows = pq.read_table([str(p) for p in parts]).to_pylist()
            found[str(folder.relative_to(lake.root))] = [
                {k: v for k, v in row.items() if k not in TIMING} for row in rows]
    return found


@pytest.mark.usefixtures("clean_cli_env")
def test_the_pipeline_on_ray_writes_the_rows_of_one_process(tmp_path, converted_model, ray_cluster, monkeypatch,
                                                            capsys):
    local = write_config(tmp_path / "local", converted_model, **STAGES)
    raw = yaml.safe_load(write_config(tmp_path / "ray", converted_model, **STAGES).read_text())
    on_ray = tmp_path / "ray" / "config.yaml"
    on_ray.write_text(yaml.safe_dump({**raw, "execution": {"engine": "ray", "shards": 3}}))
    for name in ("local", "ray"):
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / name / "home"))
        (tmp_path / name / "home").mkdir()
        assert main(["--config", str(tmp_path / name / "config.yaml"), "run"]) == 0, capsys.readouterr().err
        if name == "ray":
            instance = dg.DagsterInstance.get()  # the Ray run's, read before the environment changes back

    reference, sharded = partitions(Lake(load_config(local).lake)), partitions(Lake(load_config(on_ray).lake))
    assert {folder.split("/")[0] for folder in reference} >= {*SHARDED, "contexts", "activations", "latent_stats"}
    assert sharded.keys() == reference.keys()
    for folder, rows in reference.items():
        assert sharded[folder] == rows, folder
    assert any(row["explanation"] for row in reference[f"explanations/layer={LAYER}/sae={SAE}"])

    ray_lake = Lake(load_config(on_ray).lake)
    logs = [entry.user_message for record in instance.get_run_records()
            for entry in instance.all_logs(record.dagster_run.run_id)]
    for table, done_word in SHARDED.items():
        event = instance.get_latest_materialization_event(dg.AssetKey(table)).asset_materialization
        assert event.metadata["engine"].value == "ray" and event.metadata["shards"].value == 3, table
        resumed = event.metadata["chunks_resumed" if table == "latents" else "shards_resumed"].value
        assert resumed == 0, table
        shards = [m for m in logs if m.startswith(f"{table} ") and f"shards {done_word} (ray engine)" in m]
        assert shards and shards[-1].endswith(f"3 of 3 shards {done_word} (ray engine)"), (table, shards)
        # Selection and the LLM stages write a part per latent range; caching a part per chunk, whatever the
        # shard count.
        expected = 4 if table == "latents" else 3
        assert len(ray_lake.files(table, LAYER, SAE)) == expected, table

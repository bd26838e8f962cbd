"""The `explanations` and `scores` assets with `execution: {engine: ray}`: a real Dagster run whose assets submit
their shards to a real local Ray cluster (the token baseline and the embedder: no LLM), log and report them, and
commit the rows of the in-process run."""

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from assets.explanations import build_explanation_assets
from assets.lineage import build_settings_assets, dagster_partition
from assets.resources import PipelineConfigResource
from assets.scoring import build_scoring_assets
from sae.config import load_config
from sae.explanations.stage import explain_latents
from sae.lake import lake_for
from sae.scoring.stage import open_embedder, score_explanations

from ..conftest import build_planted_lake

KEY = ("layers.1", "planted")
STEPS = {"explanations": "explained", "scores": "scored"}


def rows(cfg, table: str) -> list[dict]:
    files = [str(f) for f in lake_for(cfg).files(table, *KEY)]
    return [{k: v for k, v in row.items() if k != "created_at"} for row in pq.read_table(files).to_pylist()]


@pytest.mark.slow
def test_the_assets_run_their_shards_on_ray(tmp_path, converted_model, ray_cluster):
    local = build_planted_lake(tmp_path, converted_model, [], saes=[{"name": "planted", "planted": {}}],
                               explain={"n_examples": 6, "llm": {"backend": "tokens"}},
                               score={"scorers": ["embedding"], "n_activating": 4, "n_silent": 4})
    explain_latents(local, *KEY, None, progress=False)
    score_explanations(local, *KEY, None, open_embedder(local), progress=False)
    reference = {table: rows(local, table) for table in STEPS}
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    on_ray = tmp_path / "ray.yaml"
    on_ray.write_text(yaml.safe_dump({**raw, "execution": {"engine": "ray", "shards": 3}}))
    cfg = load_config(on_ray)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([*build_settings_assets(cfg, str(on_ray)), *build_explanation_assets(cfg),
                             *build_scoring_assets(cfg)], selection=list(STEPS),
                            partition_key=str(dagster_partition(KEY)), instance=instance,
                            resources={"pipeline_config": PipelineConfigResource(path=str(on_ray))})
    assert result.success
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    for table, done_word in STEPS.items():
        metadata = result.asset_materializations_for_node(table)[0].metadata
        assert metadata["engine"].value == "ray" and metadata["shards"].value == 3
        assert metadata["shards_resumed"].value == 0 and metadata["llm_calls"].value == 0
        assert [m for m in logs if f"shards {done_word}" in m] == [
            f"{table} layers.1|planted: {done} of 3 shards {done_word} (ray engine)" for done in (1, 2, 3)]
        assert len(lake_for(cfg).files(table, *KEY)) == 3 and rows(cfg, table) == reference[table]

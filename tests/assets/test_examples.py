"""The `examples` asset with `execution: {engine: ray}`: a real Dagster run whose asset submits the shards to a
real local Ray cluster, reports them, and commits the rows of the in-process run."""

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from assets.examples import build_example_assets
from assets.lineage import build_settings_assets, dagster_partition
from assets.resources import PipelineConfigResource
from sae.config import load_config
from sae.lake import lake_for

from ..conftest import build_planted_lake

KEY = ("layers.1", "planted")


def rows(cfg) -> list[dict]:
    return pq.read_table([str(f) for f in lake_for(cfg).files("examples", *KEY)]).to_pylist()


@pytest.mark.slow
def test_the_asset_runs_its_shards_on_ray(tmp_path, converted_model, ray_cluster):
    local = build_planted_lake(tmp_path, converted_model, [], saes=[{"name": "planted", "planted": {}}])
    reference = rows(local)
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    on_ray = tmp_path / "ray.yaml"
    on_ray.write_text(yaml.safe_dump({**raw, "execution": {"engine": "ray", "shards": 3}}))
    cfg = load_config(on_ray)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([*build_settings_assets(cfg, str(on_ray)), *build_example_assets(cfg)],
                            selection=["examples"], partition_key=str(dagster_partition(KEY)), instance=instance,
                            resources={"pipeline_config": PipelineConfigResource(path=str(on_ray))})
    assert result.success
    metadata = result.asset_materializations_for_node("examples")[0].metadata
    assert metadata["engine"].value == "ray" and metadata["shards"].value == 3
    assert metadata["shards_resumed"].value == 0
    logged = [entry.user_message for entry in instance.all_logs(result.run_id)
              if "shards selected" in entry.user_message]
    assert logged == [f"examples layers.1|planted: {done} of 3 shards selected (ray engine)" for done in (1, 2, 3)]
    assert len(lake_for(cfg).files("examples", *KEY)) == 3 and rows(cfg) == reference

"""The `examples` asset: per latent, train windows for the explainer and disjoint test windows for scoring."""

import dagster as dg

from sae.config import PipelineConfig
from sae.examples import stage as examples_stage
from sae.lake import lake_for

from .lineage import check_results, lake_asset, partitions_of
from .metadata import markdown_table, publish_views, shard_logger
from .resources import PipelineConfigResource


def build_example_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @lake_asset(cfg, "examples", group_name="latents", deps=["latents"], checks=examples_stage.CHECKS,
                kinds={"duckdb", "parquet"})
    def examples(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Top, quantile-stratified, random (silent) and hard-negative windows per latent, with token ids and
        per-token activations; test windows never share a token with a train window of their latent, and
        activating ones never a context. Also writes `example_coverage`, which flags latents short of examples
        with the reason."""
        cfg = pipeline_config.config
        outcomes = {}
        for partition, key in partitions_of(context):
            progress = shard_logger(context, "examples", key, "selected", cfg.execution.engine)
            table, covered, shards = examples_stage.build_examples(cfg, *key, progress=progress)
            complete = sum(covered.column("complete").to_pylist())
            context.add_asset_metadata({
                "windows": table.num_rows, "latents": covered.num_rows, "complete": complete,
                "flagged": covered.num_rows - complete, "engine": cfg.execution.engine, "shards": len(shards),
                "shards_resumed": sum(shard.resumed for shard in shards),
                "preview": markdown_table(examples_stage.preview_examples(cfg, table))}, partition_key=partition)
            outcomes[key] = examples_stage.check_examples(cfg, key)
        publish_views(lake_for(cfg))
        return dg.MaterializeResult(check_results=check_results(outcomes))

    return [examples]

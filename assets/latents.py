"""The latents stage: dense `activations` (per layer), sparse `latents` (layer x sae), and `latent_stats`,
per-latent firing statistics computed in DuckDB over the latents.

`activations` and `latents` run the subject model. A run over several partitions runs the model once with
hooks at every requested layer; both take a slot of the `gpu` pool.
"""


import dagster as dg

from sae.config import PipelineConfig
from sae.lake import lake_for
from sae.latents import stage as latents_stage

from .lineage import GPU_POOL, check_results, lake_asset, partitions_of
from .metadata import folder_bytes, markdown_table, publish_views, shard_logger
from .resources import PipelineConfigResource


def build_latent_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @lake_asset(cfg, "activations", group_name="saes", pool=GPU_POOL, deps=["contexts"], kinds={"parquet", "pytorch"})
    def activations(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Dense float16 activations at each hookpoint, one row per token: (ctx_id, pos, act[d_model])."""
        cfg = pipeline_config.config
        wanted = [h for h in context.partition_keys if cfg.writes_activations(h)]
        skipped = sorted(set(context.partition_keys) - set(wanted))
        if skipped:
            context.log.info(f"activations switched off for {skipped} (`activations: false` in the config)")
        if not wanted:
            return dg.MaterializeResult(metadata={"skipped": ", ".join(skipped)})
        progress = shard_logger(context, "activations", (", ".join(wanted),), "cached", cfg.execution.engine)
        report = latents_stage.cache_activations(cfg, wanted, shard_progress=progress)
        lake = lake_for(cfg)
        publish_views(lake)
        for hookpoint in wanted:
            context.add_asset_metadata({"bytes": folder_bytes(lake.partition("activations", hookpoint))},
                                       partition_key=hookpoint)
        return dg.MaterializeResult(metadata={
            "tokens": report.tokens, "tokens_per_second": round(report.tokens_per_second, 1),
            "chunks_resumed": report.chunks_skipped, "engine": cfg.execution.engine,
            "shards": report.shards})

    @lake_asset(cfg, "latents", group_name="latents", pool=GPU_POOL, deps=["contexts", "saes"],
                checks=latents_stage.CHECKS, kinds={"parquet", "duckdb"})
    def latents(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Non-zero SAE latent activations (latent, ctx_id, pos, act), sorted by latent, ZSTD-compressed."""
        cfg = pipeline_config.config
        keys = dict(partitions_of(context))
        progress = shard_logger(context, "latents", (", ".join(keys),), "cached", cfg.execution.engine)
        report = latents_stage.cache_latents(cfg, list(keys.values()), shard_progress=progress)
        lake = lake_for(cfg)
        publish_views(lake)
        outcomes = {}
        for partition, key in keys.items():
            nnz = latents_stage.count_rows(lake.files("latents", *key))
            size = folder_bytes(lake.partition("latents", *key))
            context.add_asset_metadata({"non_zeros": nnz, "bytes": size, "bytes_per_non_zero": size / max(nnz, 1),
                                        "l0": nnz / max(report.tokens, 1)}, partition_key=partition)
            outcomes[key] = latents_stage.check_latents(cfg, key)
        return dg.MaterializeResult(
            metadata={"tokens": report.tokens, "tokens_per_second": round(report.tokens_per_second, 1),
                      "chunks_resumed": report.chunks_skipped, "engine": cfg.execution.engine,
                      "shards": report.shards},
            check_results=check_results(outcomes))

    @lake_asset(cfg, "latent_stats", group_name="latents", deps=["latents"], kinds={"duckdb", "parquet"})
    def latent_stats(context: dg.AssetExecutionContext,
                     pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Per latent: n_fired, n_contexts, frequency, max / mean activation, quantile edges, dead."""
        cfg = pipeline_config.config
        for partition, key in partitions_of(context):
            table = latents_stage.compute_latent_stats(cfg, *key)
            dead = sum(table.column("dead").to_pylist())
            context.add_asset_metadata({
                "latents": table.num_rows, "dead": dead, "dead_fraction": dead / max(table.num_rows, 1),
                "most_frequent_latents": markdown_table(latents_stage.preview_latents(cfg, *key, n=5))},
                partition_key=partition)
        publish_views(lake_for(cfg))
        return dg.MaterializeResult()

    return [activations, latents, latent_stats]

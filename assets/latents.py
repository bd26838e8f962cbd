"""The latents stage: dense `activations` (per layer), sparse `latents` (layer x sae), and `latent_stats`,
per-latent firing statistics computed in DuckDB over the latents.

`activations` and `latents` run the subject model. Both use single-run backfills, so a run over several
partitions runs the model once with hooks at every requested layer; both take a slot of the `gpu` pool.
"""


import dagster as dg

from sae.config import PipelineConfig
from sae.lake import lake_for
from sae.latents import stage as latents_stage

from .metadata import folder_bytes, markdown_table
from .partitions import layer_partitions, layer_sae_keys, per_layer_sae
from .resources import PipelineConfigResource


def build_latent_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name="saes",
        partitions_def=layer_partitions(cfg),
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="gpu",
        deps=["contexts"],
        kinds={"parquet", "pytorch"},
    )
    def activations(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Dense float16 activations at each hookpoint, one row per token: (ctx_id, pos, act[d_model])."""
        cfg = pipeline_config.config
        wanted = [h for h in context.partition_keys if cfg.writes_activations(h)]
        skipped = sorted(set(context.partition_keys) - set(wanted))
        if skipped:
            context.log.info(f"activations switched off for {skipped} (`activations: false` in the config)")
        if not wanted:
            return dg.MaterializeResult(metadata={"skipped": ", ".join(skipped)})
        report = latents_stage.cache_activations(cfg, wanted)
        lake = lake_for(cfg)
        lake.refresh_views()
        rows = [{"layer": h, "bytes": folder_bytes(lake.partition("activations", h))} for h in wanted]
        return dg.MaterializeResult(
            metadata={
                "tokens": report.tokens,
                "tokens_per_second": round(report.tokens_per_second, 1),
                "chunks_resumed": report.chunks_skipped,
                "partitions": markdown_table(rows),
            }
        )

    @dg.asset(
        group_name="latents",
        **per_layer_sae(cfg),
        pool="gpu",
        deps=["contexts", "saes"],
        kinds={"parquet", "duckdb"},
    )
    def latents(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Non-zero SAE latent activations (latent, ctx_id, pos, act), sorted by latent, ZSTD-compressed."""
        cfg = pipeline_config.config
        keys = layer_sae_keys(context)
        report = latents_stage.cache_latents(cfg, keys)
        lake = lake_for(cfg)
        lake.refresh_views()
        rows = []
        for hookpoint, name in keys:
            nnz = latents_stage.count_rows(lake.files("latents", hookpoint, name))
            size = folder_bytes(lake.partition("latents", hookpoint, name))
            rows.append({"layer": hookpoint, "sae": name, "non_zeros": nnz, "bytes": size,
                         "bytes_per_non_zero": size / max(nnz, 1), "l0": nnz / max(report.tokens, 1)})
        return dg.MaterializeResult(
            metadata={
                "tokens": report.tokens,
                "tokens_per_second": round(report.tokens_per_second, 1),
                "chunks_resumed": report.chunks_skipped,
                "non_zeros": sum(r["non_zeros"] for r in rows),
                "partitions": markdown_table(rows),
            }
        )

    @dg.asset(
        group_name="latents",
        **per_layer_sae(cfg),
        deps=["latents"],
        kinds={"duckdb", "parquet"},
    )
    def latent_stats(
        context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource
    ) -> dg.MaterializeResult:
        """Per latent: n_fired, n_contexts, frequency, max / mean activation, quantile edges, dead."""
        cfg = pipeline_config.config
        rows = []
        previews = []
        for hookpoint, name in layer_sae_keys(context):
            table = latents_stage.compute_latent_stats(cfg, hookpoint, name)
            dead = sum(table.column("dead").to_pylist())
            rows.append({"layer": hookpoint, "sae": name, "latents": table.num_rows,
                         "dead": dead, "dead_fraction": dead / table.num_rows})
            previews.extend(latents_stage.preview_latents(cfg, hookpoint, name, n=5))
        lake_for(cfg).refresh_views()
        return dg.MaterializeResult(
            metadata={"summary": markdown_table(rows), "most_frequent_latents": markdown_table(previews)}
        )

    return [activations, latents, latent_stats]

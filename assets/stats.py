"""The `latent_stats` asset: per-latent firing statistics computed in DuckDB over the latents."""


import dagster as dg

from sae import pipeline
from sae.config import PipelineConfig

from .metadata import markdown_table
from .partitions import layer_sae_keys, per_layer_sae
from .resources import PipelineConfigResource


def build_stats_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
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
            table = pipeline.compute_latent_stats(cfg, hookpoint, name)
            dead = sum(table.column("dead").to_pylist())
            rows.append({"layer": hookpoint, "sae": name, "latents": table.num_rows,
                         "dead": dead, "dead_fraction": dead / table.num_rows})
            previews.extend(pipeline.preview_latents(cfg, hookpoint, name, n=5))
        pipeline.lake_for(cfg).refresh_views()
        return dg.MaterializeResult(
            metadata={"summary": markdown_table(rows), "most_frequent_latents": markdown_table(previews)}
        )

    return [latent_stats]

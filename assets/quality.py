"""SAE quality: the spliced-in loss of every variant (`sae_quality`) and one table across them all."""

import dagster as dg

from sae import pipeline
from sae.config import PipelineConfig

from .metadata import markdown_table
from .partitions import layer_sae_keys, per_layer_sae
from .resources import PipelineConfigResource

SUMMARY_COLUMNS = ("layer", "sae", "architecture", "num_latents", "k", "l0", "fvu", "dead_fraction",
                   "ce_clean", "ce_increase", "ce_increase_mean_ablated", "ce_recovered")


def build_quality_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name="quality",
        **per_layer_sae(cfg),
        pool="gpu",
        deps=["saes", "contexts"],
        kinds={"pytorch", "parquet"},
    )
    def sae_quality(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """L0, FVU, dead fraction, and the rise in next-token cross-entropy when the SAE's reconstruction
        replaces the activation at its hookpoint (against replacing it by its mean), on held-out contexts."""
        cfg = pipeline_config.config
        rows = pipeline.measure_quality(cfg, layer_sae_keys(context))
        pipeline.lake_for(cfg).refresh_views()
        metadata = {"quality": markdown_table([{c: r[c] for c in SUMMARY_COLUMNS} for r in rows])}
        if len(rows) == 1:
            metadata.update({key: float(rows[0][key]) for key in ("ce_increase", "ce_recovered")})
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(group_name="quality", deps=["sae_quality", "latent_stats"], kinds={"duckdb"})
    def sae_quality_summary(pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Every SAE variant side by side (the `sae_quality` view of the lake)."""
        rows = pipeline.quality_summary(pipeline_config.config)
        return dg.MaterializeResult(metadata={"variants": len(rows), "summary": markdown_table(rows)})

    return [sae_quality, sae_quality_summary]

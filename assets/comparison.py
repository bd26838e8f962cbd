"""Comparing SAE variants across sizes and layers: `explanation_embeddings` per layer x sae, and
`similarity` across every pair of partitions."""

import dagster as dg

from sae.comparison import stage as comparison_stage
from sae.config import PipelineConfig
from sae.lake import lake_for
from sae.scoring import stage as scoring_stage

from .lineage import lake_asset, partitions_of
from .metadata import markdown_table, publish_views
from .resources import PipelineConfigResource

SUMMARY_COLUMNS = ("layer_a", "sae_a", "layer_b", "sae_b", "relation", "n_a", "n_b", "explanation_mean_best",
                   "explanation_frac_above", "explanation_mean_optimal", "decoder_mean_best", "agreement")


def build_comparison_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @lake_asset(cfg, "explanation_embeddings", group_name="similarity", deps=["explanations"],
                kinds={"pytorch", "parquet"})
    def explanation_embeddings(context: dg.AssetExecutionContext,
                               pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """The parsed explanations embedded with the configured sentence-transformer (GPU when present)."""
        cfg = pipeline_config.config
        embedder = scoring_stage.open_embedder(cfg)
        for partition, key in partitions_of(context):
            table = comparison_stage.embed_explanations(cfg, *key, embedder)
            context.add_asset_metadata({"explanations": table.num_rows}, partition_key=partition)
        publish_views(lake_for(cfg))
        return dg.MaterializeResult(metadata={"embedder": embedder.name})

    @lake_asset(cfg, "similarity", group_name="similarity", deps=["explanation_embeddings", "saes"],
                kinds={"pytorch", "parquet"})
    def similarity(pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """For every pair of partitions (same layer, other size; adjacent and distant layers; SAE vs neurons):
        each latent's most similar latent of the other by explanation cosine, an optimal one-to-one matching,
        and, where both decode into the residual stream, the same by decoder direction and how often the two
        matchings agree. Matched pairs in `similarity`, figures per pair in `similarity_summary`."""
        cfg = pipeline_config.config
        pairs, summary, plots = comparison_stage.compare_variants(cfg)
        publish_views(lake_for(cfg))
        rows = [{c: r.get(c) for c in SUMMARY_COLUMNS} for r in summary.to_pylist()]
        return dg.MaterializeResult(metadata={
            "pairs": pairs.num_rows, "summary": markdown_table(rows),
            **{name: dg.MetadataValue.md(markdown) for name, markdown in plots.items()}})

    return [explanation_embeddings, similarity]

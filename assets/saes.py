"""The SAEs stage: `saes`, each layer's SAE variants, trained on the activations or loaded, stored in the lake;
`sae_quality`, the spliced-in loss of every variant; and `sae_quality_summary`, one table across them all."""


import dagster as dg

from sae.config import PipelineConfig
from sae.lake import lake_for
from sae.saes import stage as saes_stage

from .lineage import GPU_POOL, lake_asset, partitions_of
from .metadata import markdown_table, publish_views
from .partitions import LAYER
from .resources import PipelineConfigResource


def build_sae_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @lake_asset(cfg, "saes", group_name="saes", pool=GPU_POOL, kinds={"pytorch", "safetensors"},
                deps=[dg.AssetDep("activations", partition_mapping=dg.MultiToSingleDimensionPartitionMapping(LAYER))])
    def saes(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """The SAE of each layer x variant, written in the sparsify layout (cfg.json + sae.safetensors;
        SAELens layout for ReLU / JumpReLU SAEs), with FVU, L0 and dead fraction on held-out tokens."""
        cfg = pipeline_config.config
        keys = dict(partitions_of(context))
        trained = {}
        for hookpoint in dict.fromkeys(h for h, _ in keys.values()):
            names = [n for h, n in keys.values() if h == hookpoint and cfg.sae(n).train]
            if names:
                trained.update({(hookpoint, n): sae for n, sae in saes_stage.train_saes(cfg, hookpoint, names).items()})
        for partition, key in keys.items():
            result = saes_stage.build_sae(cfg, *key, trained=trained.get(key))
            m = result.metrics
            row = {**{c: result.row[c] for c in ("architecture", "num_latents", "k")}, "format": result.written_format,
                   **({"fvu": m.fvu, "l0": m.l0, "dead_fraction": m.dead_fraction} if m else {})}
            context.add_asset_metadata(row, partition_key=partition)
            context.log.info(f"{partition}: {row}")
        publish_views(lake_for(cfg))
        return dg.MaterializeResult()

    @lake_asset(cfg, "sae_quality", group_name="quality", pool=GPU_POOL, deps=["saes", "contexts"],
                kinds={"pytorch", "parquet"})
    def sae_quality(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """L0, FVU, dead fraction, and the rise in next-token cross-entropy when the SAE's reconstruction
        replaces the activation at its hookpoint (against replacing it by its mean), on held-out contexts."""
        cfg = pipeline_config.config
        keys = dict(partitions_of(context))
        rows = saes_stage.measure_quality(cfg, list(keys.values()))
        for partition, row in zip(keys, rows, strict=True):
            context.add_asset_metadata({key: row[key] for key in ("fvu", "l0", "ce_increase", "ce_recovered")},
                                       partition_key=partition)
        publish_views(lake_for(cfg))
        return dg.MaterializeResult()

    @lake_asset(cfg, "sae_quality_summary", group_name="quality", deps=["sae_quality", "latent_stats"],
                kinds={"duckdb"})
    def sae_quality_summary(pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Every SAE variant of the config side by side: L0, FVU, dead fraction and spliced-in loss."""
        table = saes_stage.quality_summary(pipeline_config.config)
        publish_views(lake_for(pipeline_config.config))
        return dg.MaterializeResult(metadata={"variants": table.num_rows,
                                              "summary": markdown_table(table.to_pylist())})

    @lake_asset(cfg, "latent_logits", group_name="saes", pool=GPU_POOL, deps=["saes"], kinds={"pytorch", "parquet"})
    def latent_logits(context: dg.AssetExecutionContext,
                      pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """What each latent writes to the output: its decoder direction (for neurons, their column of the MLP's
        down projection) through the final norm's weight and the unembedding, the top and bottom
        explain.n_logit_tokens tokens with their logits. Empty for a variant without a decoder."""
        cfg = pipeline_config.config
        keys = dict(partitions_of(context))
        tables = saes_stage.write_latent_logits(cfg, list(keys.values()))
        for partition, key in keys.items():
            context.add_asset_metadata({"latents": tables[key].num_rows,
                                        "promoted": markdown_table(saes_stage.preview_logits(tables[key]))},
                                       partition_key=partition)
        publish_views(lake_for(cfg))
        return dg.MaterializeResult()

    return [saes, sae_quality, sae_quality_summary, latent_logits]

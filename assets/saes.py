"""The SAEs stage: `saes`, each layer's SAE variants, trained on the activations or loaded, stored in the lake;
`sae_quality`, the spliced-in loss of every variant; and `sae_quality_summary`, one table across them all."""


import dagster as dg

from sae.config import PipelineConfig
from sae.lake import lake_for
from sae.saes import stage as saes_stage

from .metadata import markdown_table
from .partitions import LAYER, layer_sae_keys, per_layer_sae
from .resources import PipelineConfigResource

SUMMARY_COLUMNS = ("layer", "sae", "architecture", "num_latents", "k", "l0", "fvu", "dead_fraction",
                   "ce_clean", "ce_increase", "ce_increase_mean_ablated", "ce_recovered")


def build_sae_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name="saes",
        **per_layer_sae(cfg),
        pool="gpu",
        deps=[dg.AssetDep("activations", partition_mapping=dg.MultiToSingleDimensionPartitionMapping(LAYER))],
        kinds={"pytorch", "safetensors"},
    )
    def saes(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """The SAE of each layer x variant, written in the sparsify layout (cfg.json + sae.safetensors;
        SAELens layout for ReLU / JumpReLU SAEs), with FVU, L0 and dead fraction on held-out tokens."""
        cfg = pipeline_config.config
        keys = layer_sae_keys(context)
        trained = {}
        for hookpoint in dict.fromkeys(h for h, _ in keys):
            names = [n for h, n in keys if h == hookpoint and cfg.sae(n).train]
            if names:
                trained.update({(hookpoint, n): sae for n, sae in saes_stage.train_saes(cfg, hookpoint, names).items()})
        rows = []
        for hookpoint, name in keys:
            result = saes_stage.build_sae(cfg, hookpoint, name, trained=trained.get((hookpoint, name)))
            m = result.metrics
            rows.append({
                "layer": hookpoint, "sae": name, "architecture": result.sae.cfg.architecture,
                "num_latents": result.sae.num_latents, "k": result.sae.cfg.k or "",
                "fvu": m.fvu if m else "n/a", "l0": m.l0 if m else "n/a",
                "dead_fraction": m.dead_fraction if m else "n/a", "format": result.written_format,
            })
            context.log.info(f"{hookpoint}|{name}: {rows[-1]}")
        lake_for(cfg).refresh_views()
        metadata = {"saes": markdown_table(rows)}
        if len(rows) == 1 and rows[0]["fvu"] != "n/a":
            metadata.update({key: float(rows[0][key]) for key in ("fvu", "l0", "dead_fraction")})
        return dg.MaterializeResult(metadata=metadata)

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
        rows = saes_stage.measure_quality(cfg, layer_sae_keys(context))
        lake_for(cfg).refresh_views()
        metadata = {"quality": markdown_table([{c: r[c] for c in SUMMARY_COLUMNS} for r in rows])}
        if len(rows) == 1:
            metadata.update({key: float(rows[0][key]) for key in ("ce_increase", "ce_recovered")})
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(group_name="quality", deps=["sae_quality", "latent_stats"], kinds={"duckdb"})
    def sae_quality_summary(pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Every SAE variant side by side (the `sae_quality` view of the lake)."""
        rows = saes_stage.quality_summary(pipeline_config.config)
        return dg.MaterializeResult(metadata={"variants": len(rows), "summary": markdown_table(rows)})

    return [saes, sae_quality, sae_quality_summary]

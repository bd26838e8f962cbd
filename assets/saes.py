"""The `saes` asset: each layer's SAE variants, trained on the activations or loaded, stored in the lake."""


import dagster as dg

from sae import pipeline
from sae.config import PipelineConfig

from .metadata import markdown_table
from .partitions import LAYER, layer_sae_keys, layer_sae_partitions
from .resources import PipelineConfigResource


def build_sae_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name="saes",
        partitions_def=layer_sae_partitions(cfg),
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="gpu",
        deps=[dg.AssetDep("activations", partition_mapping=dg.MultiToSingleDimensionPartitionMapping(LAYER))],
        kinds={"pytorch", "safetensors"},
    )
    def saes(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """The SAE of each layer x variant, written in the sparsify layout (cfg.json + sae.safetensors;
        SAELens layout for ReLU / JumpReLU SAEs), with FVU, L0 and dead fraction on held-out tokens."""
        cfg = pipeline_config.config
        rows = []
        for hookpoint, name in layer_sae_keys(context):
            result = pipeline.build_sae(cfg, hookpoint, name)
            m = result.metrics
            rows.append({
                "layer": hookpoint, "sae": name, "architecture": result.sae.cfg.architecture,
                "num_latents": result.sae.num_latents, "k": result.sae.cfg.k or "",
                "fvu": m.fvu if m else "n/a", "l0": m.l0 if m else "n/a",
                "dead_fraction": m.dead_fraction if m else "n/a", "format": result.written_format,
            })
            context.log.info(f"{hookpoint}|{name}: {rows[-1]}")
        pipeline.lake_for(cfg).refresh_views()
        metadata = {"saes": markdown_table(rows)}
        if len(rows) == 1 and rows[0]["fvu"] != "n/a":
            metadata.update({key: float(rows[0][key]) for key in ("fvu", "l0", "dead_fraction")})
        return dg.MaterializeResult(metadata=metadata)

    return [saes]

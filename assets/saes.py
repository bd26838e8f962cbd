"""The `saes` asset: each layer's SAE variants, trained on the activations or loaded, stored in the lake."""


import dagster as dg

from sae import pipeline
from sae.config import PipelineConfig

from .metadata import markdown_table
from .partitions import LAYER, layer_sae_keys, per_layer_sae
from .resources import PipelineConfigResource


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
                trained.update({(hookpoint, n): sae for n, sae in pipeline.train_saes(cfg, hookpoint, names).items()})
        rows = []
        for hookpoint, name in keys:
            result = pipeline.build_sae(cfg, hookpoint, name, trained=trained.get((hookpoint, name)))
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

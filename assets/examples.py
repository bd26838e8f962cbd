"""The `examples` asset: per latent, train windows for the explainer and disjoint test windows for scoring."""

import dagster as dg

from sae.config import PipelineConfig
from sae.examples import stage as examples_stage
from sae.lake import lake_for

from .metadata import markdown_table
from .partitions import layer_sae_keys, per_layer_sae
from .resources import PipelineConfigResource


def build_example_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="latents", **per_layer_sae(cfg), deps=["latents"], kinds={"duckdb", "parquet"})
    def examples(context: dg.AssetExecutionContext, pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Top, quantile-stratified, random (silent) and hard-negative windows per latent, with token ids and
        per-token activations; train and test never share a window, activating ones never a context. Also
        writes `example_coverage`, which flags latents short of examples with the reason."""
        cfg = pipeline_config.config
        rows, previews = [], []
        for hookpoint, name in layer_sae_keys(context):
            table, covered = examples_stage.build_examples(cfg, hookpoint, name)
            complete = sum(covered.column("complete").to_pylist())
            rows.append({"layer": hookpoint, "sae": name, "windows": table.num_rows, "latents": covered.num_rows,
                         "complete": complete, "flagged": covered.num_rows - complete})
            previews.extend({"layer": hookpoint, "sae": name, **p} for p in examples_stage.preview_examples(cfg, table))
        lake_for(cfg).refresh_views()
        return dg.MaterializeResult(metadata={"partitions": markdown_table(rows), "preview": markdown_table(previews)})

    return [examples]

"""The `hf_export` asset: the lake as a Hugging Face dataset folder under <lake>/hf_export."""

import dagster as dg

from sae.config import PipelineConfig
from sae.export import stage as export_stage

from .lineage import lake_asset
from .metadata import markdown_table
from .resources import PipelineConfigResource


def build_export_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    @lake_asset(cfg, "hf_export", group_name="similarity",
                deps=["similarity", "score_summary", "examples", "latent_stats", "latent_logits"], kinds={"parquet"})
    def hf_export(pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
        """Explanations with their scores, examples, latent statistics and logits, scores and similarity as Parquet per
        configuration, with a dataset card: `datasets.load_dataset(folder, "explanations")` loads it, and
        `saelake export FOLDER --push ORG/NAME` publishes it."""
        folder, counts = export_stage.export_into_lake(pipeline_config.config)
        return dg.MaterializeResult(metadata={
            "folder": dg.MetadataValue.path(str(folder)),
            "configurations": markdown_table([{"config": c, "rows": n} for c, n in counts.items()])})

    return [hf_export]

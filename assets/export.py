"""The `hf_export` asset: the lake as a Hugging Face dataset folder under <lake>/hf_export."""

import dagster as dg

from sae.export import stage as export_stage
from sae.lake import lake_for

from .metadata import markdown_table
from .resources import PipelineConfigResource

EXPORT_FOLDER = "hf_export"


@dg.asset(group_name="similarity", deps=["similarity", "score_summary", "examples", "latent_stats"],
          kinds={"parquet"})
def hf_export(pipeline_config: PipelineConfigResource) -> dg.MaterializeResult:
    """Explanations with their scores, examples, latent statistics, scores and similarity as Parquet per
    configuration, with a dataset card: `datasets.load_dataset(folder, "explanations")` loads it, and
    `saelake export FOLDER --push ORG/NAME` publishes it."""
    cfg = pipeline_config.config
    folder = lake_for(cfg).root / EXPORT_FOLDER
    counts = export_stage.export_lake(cfg, folder, overwrite=True)
    return dg.MaterializeResult(metadata={
        "folder": dg.MetadataValue.path(str(folder)),
        "configurations": markdown_table([{"config": c, "rows": n} for c, n in counts.items()])})

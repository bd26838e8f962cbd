"""Builds the `Definitions` of the code location from one pipeline config."""

from __future__ import annotations

import warnings

import dagster as dg

from sae.config import PipelineConfig, load_config

from .comparison import build_comparison_assets
from .corpus import build_corpus_assets
from .examples import build_example_assets
from .explanations import build_explanation_assets
from .export import build_export_assets
from .latents import build_latent_assets
from .lineage import build_settings_assets, partitions_def
from .resources import PipelineConfigResource, config_path_from_env
from .saes import build_sae_assets
from .scoring import build_scoring_assets

# Single-run backfills and the layer -> layer x sae mapping are marked beta; the pinned release is tested.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

# The jobs `saelake run` runs, in this order, each over the partitions that are missing or stale; their names
# are what the UI's run list shows. Every asset is in exactly one of them.
JOBS = {
    "corpus": ("contexts",),
    "dense_activations": ("activations",),
    "layer_sae_partitions": ("saes", "sae_quality", "latent_logits", "latents", "latent_stats", "examples",
                             "explanations", "scores", "explanation_embeddings"),
    "summaries_and_export": ("sae_quality_summary", "score_summary", "similarity", "hf_export"),
}


def build_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    return [*build_corpus_assets(cfg), *build_latent_assets(cfg), *build_sae_assets(cfg),
            *build_example_assets(cfg), *build_explanation_assets(cfg), *build_scoring_assets(cfg),
            *build_comparison_assets(cfg), *build_export_assets(cfg)]


def build_jobs(cfg: PipelineConfig) -> list[dg.UnresolvedAssetJobDefinition]:
    return [dg.define_asset_job(name, selection=list(assets), partitions_def=partitions_def(cfg, assets[0]),
                                description=f"saelake run: {', '.join(assets)}")
            for name, assets in JOBS.items()]


def build_definitions(config_path: str | None = None) -> dg.Definitions:
    path = str(config_path or config_path_from_env())
    cfg = load_config(path)
    return dg.Definitions(
        assets=[*build_settings_assets(cfg, path), *build_assets(cfg)],
        jobs=build_jobs(cfg),
        resources={"pipeline_config": PipelineConfigResource(path=path)},
    )

"""Builds the `Definitions` of the code location from one pipeline config."""

from __future__ import annotations

import warnings

import dagster as dg

from sae.config import PipelineConfig, load_config

from .comparison import build_comparison_assets
from .corpus import contexts
from .examples import build_example_assets
from .explanations import build_explanation_assets
from .export import hf_export
from .latents import build_latent_assets
from .resources import PipelineConfigResource, config_path_from_env
from .saes import build_sae_assets
from .scoring import build_scoring_assets

# Single-run backfills and the layer -> layer x sae mapping are marked beta; the pinned release is tested.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def build_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    return [contexts, *build_latent_assets(cfg), *build_sae_assets(cfg), *build_example_assets(cfg),
            *build_explanation_assets(cfg), *build_scoring_assets(cfg), *build_comparison_assets(cfg), hf_export]


def build_definitions(config_path: str | None = None) -> dg.Definitions:
    path = config_path or config_path_from_env()
    cfg = load_config(path)
    return dg.Definitions(
        assets=build_assets(cfg),
        resources={"pipeline_config": PipelineConfigResource(path=str(path))},
    )

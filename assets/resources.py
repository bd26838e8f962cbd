"""The pipeline config as a resource: which YAML file is read is set by the environment (SAELAKE_CONFIG)."""

from __future__ import annotations

import os
from functools import cached_property

import dagster as dg

from sae.config import DEFAULT_CONFIG, PipelineConfig, load_config

CONFIG_ENV = "SAELAKE_CONFIG"


def config_path_from_env() -> str:
    return os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG)


class PipelineConfigResource(dg.ConfigurableResource):
    """Where the pipeline config lives; every asset reads its settings from it."""

    path: str

    @cached_property
    def config(self) -> PipelineConfig:
        return load_config(self.path)

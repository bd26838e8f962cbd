"""Partitions, built from the pipeline config: layers, and layer x sae."""

from __future__ import annotations

import dagster as dg

from sae.config import PipelineConfig

LAYER = "layer"
SAE = "sae"


def layer_partitions(cfg: PipelineConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(cfg.hookpoints)


def layer_sae_partitions(cfg: PipelineConfig) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {LAYER: layer_partitions(cfg), SAE: dg.StaticPartitionsDefinition(cfg.sae_names)}
    )


def layer_sae_keys(context: dg.AssetExecutionContext) -> list[tuple[str, str]]:
    """The (hookpoint, sae) pairs of this run: one, or many in a single-run backfill."""
    return [(k.keys_by_dimension[LAYER], k.keys_by_dimension[SAE]) for k in context.partition_keys]

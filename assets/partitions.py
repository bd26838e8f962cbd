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


def per_layer_sae(cfg: PipelineConfig) -> dict:
    """The partitioning shared by every layer x sae asset: one run may cover many partitions, so the
    model runs once for all of them."""
    return {"partitions_def": layer_sae_partitions(cfg), "backfill_policy": dg.BackfillPolicy.single_run()}

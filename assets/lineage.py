"""Lineage in Dagster (see sae/lineage.py): each asset's code version, and its settings shown as an observable
source `settings/<asset>` whose data version, per partition, is the fingerprint the config gives that
partition. Editing the config changes those versions, so the UI marks exactly the affected partitions stale
and names the setting source as the cause. `saelake run` records the observation before it runs; in the UI,
*Observe sources* does the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import dagster as dg
from dagster._core.definitions.data_version import extract_data_version_from_entry

from sae.checks import ERROR, WARN, CheckOutcome, CheckSpec
from sae.config import PipelineConfig, load_config
from sae.lineage import BY_NAME, Lineage, PartitionKey, partition_keys, partition_label

from .partitions import LAYER, SAE, layer_partitions, layer_sae_partitions

SETTINGS = "settings"
SEVERITY_WORDS = {ERROR: "an error: it blocks what is downstream", WARN: "a warning: it blocks nothing"}
GPU_POOL = "gpu"


def partitions_def(cfg: PipelineConfig, asset: str) -> dg.PartitionsDefinition | None:
    kind = BY_NAME[asset].partitioning
    if kind == "layer":
        return layer_partitions(cfg)
    if kind == "layer_sae":
        return layer_sae_partitions(cfg)
    return None


def settings_key(asset: str) -> dg.AssetKey:
    return dg.AssetKey([SETTINGS, asset])


def dagster_partition(key: PartitionKey) -> str | None:
    """The Dagster partition key of a lineage key: `layers.3`, or `layers.3|topk-x4` (dimensions by name)."""
    if isinstance(key, tuple):
        return dg.MultiPartitionKey({LAYER: key[0], SAE: key[1]})
    return key


def lineage_key(partition: str | dg.MultiPartitionKey | None) -> PartitionKey:
    if isinstance(partition, dg.MultiPartitionKey):
        return partition.keys_by_dimension[LAYER], partition.keys_by_dimension[SAE]
    return partition


def settings_versions(cfg: PipelineConfig, asset: str) -> dict[str | None, str]:
    """Dagster partition key (None when unpartitioned) -> the fingerprint the config gives it."""
    lineage = Lineage(cfg)
    return {dagster_partition(key): lineage.fingerprint(asset, key) for key in partition_keys(cfg, asset)}


def build_settings_assets(cfg: PipelineConfig, config_path: str) -> list[dg.SourceAsset]:
    def source(asset: str):
        @dg.observable_source_asset(key=settings_key(asset), group_name=SETTINGS,
                                    partitions_def=partitions_def(cfg, asset),
                                    description=f"The settings and inputs that {asset} is made from, as a "
                                                "fingerprint per partition (its data version).")
        def observe():
            # Read the file anew: the point is to notice an edit made since the code location loaded.
            versions = settings_versions(load_config(config_path), asset)
            if None in versions:
                return dg.DataVersion(versions[None])
            return dg.DataVersionsByPartition({k: dg.DataVersion(v) for k, v in versions.items()})

        return observe

    return [source(spec) for spec in BY_NAME]


def record_settings(instance: dg.DagsterInstance, cfg: PipelineConfig) -> int:
    """Report every settings partition whose fingerprint differs from the last one recorded; returns how many."""
    reported = 0
    for asset in BY_NAME:
        key = settings_key(asset)
        for partition, fingerprint in settings_versions(cfg, asset).items():
            record = instance.get_latest_data_version_record(key, True, partition)
            last = extract_data_version_from_entry(record.event_log_entry) if record else None
            if last is None or last.value != fingerprint:
                instance.report_runless_asset_event(dg.AssetObservation(
                    asset_key=key, partition=partition, tags={"dagster/data_version": fingerprint}))
                reported += 1
    return reported


def lake_asset(cfg: PipelineConfig, name: str, deps: Sequence = (), checks: Sequence[CheckSpec] = (),
               **kwargs) -> Callable:
    """@dg.asset for a lineage asset: its partitions, its code version, its settings source among its deps, and
    its data checks as check specs (error checks block what is downstream)."""
    spec = BY_NAME[name]
    options = {"partitions_def": partitions_def(cfg, name)}
    if spec.partitioning != "none":
        # A run over many partitions is one step: the model runs once for all of them.
        options["backfill_policy"] = dg.BackfillPolicy.single_run()
    check_specs = [dg.AssetCheckSpec(c.name, asset=name, description=f"{c.about} ({SEVERITY_WORDS[c.severity]})",
                                     blocking=c.severity == ERROR) for c in checks]
    return dg.asset(name=name, code_version=spec.code_version, deps=[*deps, settings_key(name)],
                    check_specs=check_specs or None, **options, **kwargs)


def partitions_of(context: dg.AssetExecutionContext) -> Iterator[tuple[str, PartitionKey]]:
    """(Dagster partition key, lineage key) of every partition this run materializes."""
    for partition in context.partition_keys:
        yield partition, lineage_key(partition)


def check_results(outcomes: dict[PartitionKey, list[CheckOutcome]]) -> list[dg.AssetCheckResult]:
    """One result per check across the run's partitions: it fails where any partition fails, and says which."""
    by_check: dict[str, list[tuple[PartitionKey, CheckOutcome]]] = {}
    for key, found in outcomes.items():
        for outcome in found:
            by_check.setdefault(outcome.name, []).append((key, outcome))
    results = []
    for name, found in by_check.items():
        failed = [(k, o) for k, o in found if not o.passed]
        severity = dg.AssetCheckSeverity.ERROR if found[0][1].severity == ERROR else dg.AssetCheckSeverity.WARN
        shown = failed or found[:1]  # every failing partition by name; else one example of a pass
        description = "; ".join(f"{partition_label(k) if k else 'all'}: {o.description}" for k, o in shown)
        verdict = f"{len(failed)} of {len(found)} partitions fail" if failed else f"{len(found)} partitions pass"
        results.append(dg.AssetCheckResult(
            check_name=name, passed=not failed, severity=severity, description=f"{verdict}. {description}",
            metadata={"partitions": dg.MetadataValue.json(
                {partition_label(k) if k else "all": {"passed": o.passed, **o.metadata} for k, o in found})}))
    return results

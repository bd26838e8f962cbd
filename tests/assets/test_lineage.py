"""Lineage in Dagster: settings sources make edited partitions stale in the instance (what the UI shows), and
an error check blocks what is downstream in the same run while a warning does not. Real Dagster runs on an
ephemeral instance; the asset bodies are small stand-ins, since what is tested is the wiring around them."""

import copy

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from assets.lineage import (
    build_settings_assets,
    check_results,
    dagster_partition,
    lake_asset,
    record_settings,
    settings_key,
)
from sae.checks import ERROR, WARN, CheckOutcome, CheckSpec
from sae.config import parse_config

RAW = {"n_tokens": 4096, "ctx_len": 64, "layers": [{"hookpoint": "layers.1"}, {"hookpoint": "layers.3"}],
       "saes": [{"name": "a", "train": {"k": 8}}, {"name": "b", "train": {"k": 8}}]}


def make_config(tmp_path, k_of_b: int = 8):
    raw = copy.deepcopy(RAW)
    raw["lake"] = str(tmp_path / "lake")
    raw["saes"][1]["train"]["k"] = k_of_b
    return parse_config(raw)


def stand_in_assets(cfg, severity: str, ran: list[str]):
    @lake_asset(cfg, "examples", checks=[CheckSpec("disjoint", severity, "test and train windows share no token")])
    def examples(context: dg.AssetExecutionContext):
        ran.append("examples")
        return dg.MaterializeResult(check_results=check_results(
            {("layers.1", "a"): [CheckOutcome("disjoint", False, severity, "2 overlapping windows")]}))

    @lake_asset(cfg, "explanations", deps=["examples"])
    def explanations(context: dg.AssetExecutionContext):
        ran.append("explanations")

    return [examples, explanations]


@pytest.mark.parametrize("severity", [ERROR, WARN])
def test_an_error_check_blocks_downstream_and_a_warning_does_not(tmp_path, severity):
    cfg = make_config(tmp_path)
    ran: list[str] = []
    assets = stand_in_assets(cfg, severity, ran)
    sources = build_settings_assets(cfg, "unused")
    result = dg.materialize([*sources, *assets], selection=["examples", "explanations"], raise_on_error=False,
                            partition_key=str(dagster_partition(("layers.1", "a"))),
                            instance=dg.DagsterInstance.ephemeral())
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and "1 of 1 partitions fail" in evaluation.description
    assert "layers.1|a: 2 overlapping windows" in evaluation.description
    assert ran == (["examples"] if severity == ERROR else ["examples", "explanations"])


def test_editing_one_sae_makes_exactly_its_partitions_stale(tmp_path):
    cfg = make_config(tmp_path)
    config_path = tmp_path / "config.yaml"
    instance = dg.DagsterInstance.ephemeral()
    ran: list[str] = []
    assets = [*build_settings_assets(cfg, str(config_path)), *stand_in_assets(cfg, WARN, ran)]
    record_settings(instance, cfg)
    for key in [("layers.1", "a"), ("layers.1", "b"), ("layers.3", "a"), ("layers.3", "b")]:
        dg.materialize(assets, selection=["examples"], partition_key=str(dagster_partition(key)), instance=instance)

    def stale() -> set[str]:
        resolver = get_stale_status_resolver(instance, assets)
        return {key for key in ["layers.1|a", "layers.1|b", "layers.3|a", "layers.3|b"]
                if resolver.get_status(dg.AssetKey("examples"), key) == StaleStatus.STALE}

    assert stale() == set()
    assert record_settings(instance, cfg) == 0  # nothing changed, nothing recorded
    edited = make_config(tmp_path, k_of_b=16)
    assert record_settings(instance, edited) > 0
    assert stale() == {"layers.1|b", "layers.3|b"}
    resolver = get_stale_status_resolver(instance, assets)
    causes = resolver.get_stale_root_causes(dg.AssetKey("examples"), "layers.3|b")
    assert [c.key.asset_key for c in causes] == [settings_key("examples")]

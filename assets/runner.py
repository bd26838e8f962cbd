"""`saelake run`: materialize what is missing or stale, as named Dagster runs recorded in the instance.

The plan comes from the lake (sae/lineage.py): a partition whose stored fingerprint equals the config's is
skipped, whatever the instance remembers. The rest is grouped into as few runs as the jobs allow: the
assets of one job that need the same partitions run together, so the model runs once for all of them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from sae.checks import ERROR
from sae.config import PipelineConfig
from sae.lake import lake_for
from sae.lineage import PartitionKey, PartitionState, partition_label, plan

from .definitions import JOBS, build_definitions
from .lineage import GPU_POOL, dagster_partition, record_settings

PID_TAG = "saelake/pid"
INTERRUPTED = "DagsterExecutionInterruptedError"  # how Dagster reports a step stopped by Ctrl-C
HOST_TAG = "saelake/host"
LIVE_STATUSES = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                 dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.NOT_STARTED)


@dataclass(frozen=True)
class Step:
    """One Dagster run: some assets of one job over a rectangle of partitions (or none)."""

    job: str
    assets: tuple[str, ...]
    keys: tuple[PartitionKey, ...]

    def describe(self) -> str:
        where = "" if self.keys == (None,) else f" for {', '.join(partition_label(k) for k in self.keys)}"
        return f"{', '.join(self.assets)}{where}"

    def tags(self) -> dict[str, str]:
        if self.keys == (None,):
            return {}
        first, last = self.keys[0], self.keys[-1]
        return {ASSET_PARTITION_RANGE_START_TAG: str(dagster_partition(first)),
                ASSET_PARTITION_RANGE_END_TAG: str(dagster_partition(last))}


def describe_plan(states: Sequence[PartitionState]) -> list[str]:
    """What is skipped and what is built, a line per asset: counts, and the reasons of stale partitions."""
    lines = []
    for asset in dict.fromkeys(s.asset for s in states):
        mine = [s for s in states if s.asset == asset]
        counts = {status: sum(s.status == status for s in mine) for status in ("missing", "stale", "fresh")}
        summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        verb = "skip " if counts["fresh"] == len(mine) else "build"
        lines.append(f"  {verb} {asset}: {summary}")
        stale = [s for s in mine if s.status == "stale"]
        for state in stale[:3]:
            where = "" if state.key is None else f"{partition_label(state.key)}: "
            lines.append(f"          {where}{'; '.join(state.reasons)}")
        if len(stale) > 3:
            lines.append(f"          and {len(stale) - 3} more stale partitions")
    return lines


def steps_for(cfg: PipelineConfig, todo: Sequence[PartitionState]) -> list[Step]:
    """The runs that build `todo`, in job order; within a job, consecutive assets that need the same
    partitions share a run, split into rectangles of the layer x sae grid (Dagster runs a range of each)."""
    wanted: dict[str, list[PartitionKey]] = {}
    for state in todo:
        wanted.setdefault(state.asset, []).append(state.key)
    steps = []
    for job, assets in JOBS.items():
        groups: list[tuple[list[str], list[PartitionKey]]] = []
        for asset in assets:
            if asset not in wanted:
                continue
            if groups and groups[-1][1] == wanted[asset]:
                groups[-1][0].append(asset)
            else:
                groups.append(([asset], wanted[asset]))
        for group, keys in groups:
            for rectangle in rectangles(cfg, keys):
                steps.append(Step(job, tuple(group), tuple(rectangle)))
    return steps


def rectangles(cfg: PipelineConfig, keys: Sequence[PartitionKey]) -> Iterator[list[PartitionKey]]:
    """`keys` as blocks that are contiguous in the config's order of layers (and of SAEs)."""
    if keys == [None]:
        yield [None]
        return
    layers, saes = cfg.hookpoints, cfg.sae_names
    if isinstance(keys[0], str):
        for run in _runs(sorted(layers.index(k) for k in keys)):
            yield [layers[i] for i in run]
        return
    by_sae: dict[tuple[int, ...], list[int]] = {}
    for name in saes:
        rows = tuple(sorted(layers.index(h) for h, s in keys if s == name))
        if rows:
            by_sae.setdefault(rows, []).append(saes.index(name))
    for rows, columns in by_sae.items():
        for layer_run in _runs(list(rows)):
            for sae_run in _runs(columns):
                yield [(layers[i], saes[j]) for i in layer_run for j in sae_run]


def _runs(indexes: list[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for i in indexes:
        if run and i != run[-1] + 1:
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def _label(key: PartitionKey) -> str:
    return "all" if key is None else partition_label(key)


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs of `saelake run` on this host whose process is gone (killed, crashed), and free the
    pool slots they held; otherwise the next run would wait for them forever."""
    released = []
    mine = dg.RunsFilter(statuses=list(LIVE_STATUSES), tags={HOST_TAG: socket.gethostname()})
    for run in instance.get_runs(filters=mine):
        pid = int(run.tags.get(PID_TAG, "0"))
        if pid and not _alive(pid):
            instance.report_run_failed(run, f"the saelake process {pid} that ran it is gone (killed or crashed)")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            released.append(run.run_id)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def slot_holders(instance: dg.DagsterInstance) -> list[str]:
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return sorted(info.active_run_ids)


def failure_message(result: dg.ExecuteInProcessResult, step: Step) -> str:
    """The one line a user needs: which step, which partitions, the cause, and (in the cause) the fix."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name.startswith("Dagster"):
                error = error.cause  # the user's exception, inside Dagster's wrappers
            # Dagster's message may start with the exception's qualified name: name it once.
            message = error.message.strip().split(f"{error.cls_name}: ", 1)[-1]
            message = f"{error.cls_name}: {message}"
            return f"step `{event.step_key}` failed (partitions {', '.join(map(_label, step.keys))}): {message}"
    for evaluation in _check_evaluations(result):
        if not evaluation.passed:
            return (f"the data check {evaluation.check_name} of {evaluation.asset_key.to_user_string()} failed: "
                    f"{evaluation.description}")
    return f"{step.describe()} did not finish"


def _check_evaluations(result: dg.ExecuteInProcessResult):
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            yield event.event_specific_data


def run_pipeline(cfg: PipelineConfig, config_path: str, instance: dg.DagsterInstance, select: Sequence[str] = (),
                 partitions: Sequence[str] = (), force: bool = False, verbose: bool = False) -> int:
    started = time.perf_counter()
    states = plan(cfg, lake_for(cfg), select, partitions, force)
    todo = [s for s in states if s.status != "fresh"]
    print("\n".join(describe_plan(states)), flush=True)
    if not todo:
        print(f"nothing to do: all {len(states)} partitions are fresh ({time.perf_counter() - started:.1f} s)")
        print_calibration(cfg)
        return 0
    released = release_dead_runs(instance)
    if released:
        print(f"released {len(released)} run(s) whose saelake process is gone: {', '.join(released)}")
    record_settings(instance, cfg)
    defs = build_definitions(config_path)
    steps = steps_for(cfg, todo)
    logging = {"loggers": {"console": {"config": {"log_level": "INFO" if verbose else "CRITICAL"}}}}
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for number, step in enumerate(steps, 1):
            holders = slot_holders(instance)
            if holders:
                print(f"waiting for the `{GPU_POOL}` slot, held by run(s) {', '.join(holders)} "
                      "(another saelake run, or a run started from the UI)", flush=True)
            print(f"[{number}/{len(steps)}] {step.job}: {step.describe()}", flush=True)
            result = defs.resolve_job_def(step.job).execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey(a) for a in step.assets],
                tags={**tags, **step.tags()}, run_config=logging, raise_on_error=False)
            failed = [e for e in _check_evaluations(result) if not e.passed]
            for evaluation in failed:
                print(f"  check {evaluation.asset_key.to_user_string()}.{evaluation.check_name}: "
                      f"{evaluation.severity.value.lower()}: {evaluation.description}", flush=True)
            if not result.success:
                message = failure_message(result, step)
                if INTERRUPTED in message:
                    raise KeyboardInterrupt
                print(f"saelake run: {message}\n  (the full log is in the UI: `saelake ui`, run {result.run_id})",
                      file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("saelake run: interrupted; the lake keeps every partition committed so far, and a rerun resumes",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    lake = lake_for(cfg)
    print(f"done in {time.perf_counter() - started:.0f} s. Lake: {lake}\n"
          f"  query it:   saelake sql \"SELECT layer, sae, latent, explanation FROM explanations\"\n"
          f"  see it:     saelake ui   (then open http://127.0.0.1:3000)\n"
          f"  plots:      {lake.root / 'plots'}\n"
          f"  dataset:    {lake.root / 'hf_export'}  (publish: saelake export DIR --push ORG/NAME)")
    print_calibration(cfg)
    return 0


def print_calibration(cfg: PipelineConfig) -> None:
    """A line per scorer: calibrated, UNCALIBRATED or unchecked on the planted latents (sae/scoring/calibration.py);
    and a line per explainer: how often it names the planted word."""
    from sae.explanations.stage import naming_lines
    from sae.scoring.calibration import calibration_lines
    from sae.scoring.stage import stored_calibration

    print("scorer calibration (true vs wrong explanation on planted latents):")
    for line in calibration_lines(stored_calibration(cfg)):
        print(f"  {line}")
    explainers = naming_lines(cfg)
    if explainers:
        print("explainer calibration (does an explanation of a planted latent name its word?):")
        for line in explainers:
            print(f"  {line}")


def recheck(cfg: PipelineConfig, select: Sequence[str] = (), partitions: Sequence[str] = ()) -> int:
    """The data checks of every fresh partition, run again and recorded; 1 if an error check fails."""
    from sae.examples.stage import check_examples
    from sae.explanations.stage import check_explanations
    from sae.latents.stage import check_latents
    from sae.scoring.stage import check_scores, check_summary

    checkers = {"latents": check_latents, "examples": check_examples, "explanations": check_explanations,
                "scores": check_scores, "score_summary": check_summary}
    failed_errors = 0
    for state in plan(cfg, lake_for(cfg), select or list(checkers), partitions):
        if state.asset not in checkers:
            continue
        if state.status != "fresh":
            print(f"  skip  {state.label}: {state.status} (rebuild it with `saelake run`)")
            continue
        for outcome in checkers[state.asset](cfg, state.key):
            verdict = "ok  " if outcome.passed else ("FAIL" if outcome.severity == ERROR else "warn")
            print(f"  {verdict}  {state.label} {outcome.name}: {outcome.description}")
            failed_errors += not outcome.passed and outcome.severity == ERROR
    return 1 if failed_errors else 0


def _interrupt(signum, frame):
    # SIGTERM as Ctrl-C: Dagster then stops the step at its next safe point and records the run as failed.
    os.kill(os.getpid(), signal.SIGINT)

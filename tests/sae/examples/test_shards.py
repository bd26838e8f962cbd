"""The examples stage in latent-range shards, in this process and on the actors of a real local Ray cluster (two
worker processes): the committed rows equal the single-process run's, and a worker killed mid-shard loses
nothing."""

import dataclasses
import functools
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sae.config import ExecutionConfig
from sae.examples import shards as shards_module
from sae.examples.shards import select_shard
from sae.examples.stage import build_examples, check_examples
from sae.explanations.stage import explain_latents
from sae.lake import TEMP_SUFFIX, StagingError, lake_for
from tests.conftest import build_planted_lake

KEY = ("layers.1", "planted")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, converted_model):
    """A planted lake (8 latents, 2 nearest latents each) built up to its examples in one process, one shard;
    with those rows, the reference."""
    cfg = build_planted_lake(tmp_path_factory.mktemp("shards"), converted_model, [],
                             saes=[{"name": "planted", "planted": {}}])  # the default families
    return cfg, committed_rows(cfg)


def committed_rows(cfg) -> dict[str, list[dict]]:
    lake = lake_for(cfg)
    return {table: pq.read_table([str(f) for f in lake.files(table, *KEY)]).to_pylist()
            for table in ("examples", "example_coverage")}


def with_execution(cfg, **execution):
    return dataclasses.replace(cfg, execution=ExecutionConfig(**execution))


def test_local_shards_commit_the_rows_of_one_shard(planted):
    cfg, reference = planted
    _, _, reports = build_examples(with_execution(cfg, shards=3), *KEY)
    assert [r.latent_range for r in reports] == [(0, 2), (2, 5), (5, 8)] and not any(r.resumed for r in reports)
    assert len(lake_for(cfg).files("examples", *KEY)) == 3
    assert committed_rows(cfg) == reference
    assert any(e["kind"] == "neighbour" for e in reference["examples"])
    # The readers downstream take every part: the data checks, and the explainer sees every latent.
    assert all(outcome.passed for outcome in check_examples(cfg, KEY))
    tokens_only = dataclasses.replace(cfg, explain=dataclasses.replace(
        cfg.explain, llm=dataclasses.replace(cfg.explain.llm, backend="tokens")))
    explained = explain_latents(tokens_only, *KEY, client=None, progress=False)
    assert set(explained.column("latent").to_pylist()) == {row["latent"] for row in reference["example_coverage"]}


def writes_elsewhere(other: Path, shard):
    """select_shard, except that the shard of latent 2 writes its examples part under `other` (as a worker on
    another machine writes to its own disk): it succeeds, and the driver never sees that file."""
    if shard.latent_range[0] == 2:
        shard = dataclasses.replace(shard, examples_part=str(other / Path(shard.examples_part).name))
    return select_shard(shard)


def test_a_shard_whose_part_is_not_staged_commits_nothing(planted, tmp_path):
    cfg, reference = planted
    lake = lake_for(cfg)
    committed = {table: lake.files(table, *KEY) for table in reference}
    with pytest.raises(StagingError, match=r"1 of 3 part files .* \(the first: part-00001.parquet\)"):
        build_examples(with_execution(cfg, shards=3), *KEY, run_shard=functools.partial(writes_elsewhere, tmp_path))
    assert {table: lake.files(table, *KEY) for table in reference} == committed
    assert committed_rows(cfg) == reference
    # The rerun keeps the two ranges staged and selects the missing one.
    _, _, reports = build_examples(with_execution(cfg, shards=3), *KEY)
    assert [r.resumed for r in reports] == [True, False, True] and committed_rows(cfg) == reference


def ran_in_worker(pids: Path, shard):
    """select_shard, noting the process it ran in."""
    (pids / f"{os.getpid()}-{shard.latent_range[0]}").touch()
    return select_shard(shard)


def dies_once_while_writing(marker: Path, shard):
    """select_shard, except on the first attempt of the shard `marker` names: the worker stages the coverage
    part, writes half of the examples part's file and dies (os._exit, as a killed or lost worker)."""
    if marker.exists() and marker.read_text() == str(shard.latent_range[0]):
        marker.unlink()
        write = shards_module.write_parquet

        def write_then_die(table, path, **options):
            if path == Path(shard.examples_part):
                write(table, path, **options)
                half = path.read_bytes()[: path.stat().st_size // 2]
                path.unlink()
                path.with_name(f".{path.name}.killed{TEMP_SUFFIX}").write_bytes(half)
                os._exit(1)
            write(table, path, **options)

        shards_module.write_parquet = write_then_die  # only in this worker, which dies with it
    return select_shard(shard)


@pytest.mark.slow
def test_ray_shards_commit_the_rows_of_one_process(planted, ray_cluster, workers_see_this_module, tmp_path):
    cfg, reference = planted
    progress = []
    _, _, reports = build_examples(with_execution(cfg, engine="ray", shards=3), *KEY,
                                   progress=lambda done, total: progress.append((done, total)),
                                   run_shard=functools.partial(ran_in_worker, tmp_path))
    assert progress == [(1, 3), (2, 3), (3, 3)] and not any(r.resumed for r in reports)
    ran = [p.name.split("-") for p in tmp_path.iterdir()]
    assert sorted(int(first) for _, first in ran) == [0, 2, 5]
    assert str(os.getpid()) not in {pid for pid, _ in ran}  # in Ray's worker processes, not this one
    assert committed_rows(cfg) == reference


@pytest.mark.slow
def test_a_worker_killed_mid_shard_loses_no_rows(planted, ray_cluster, workers_see_this_module, tmp_path):
    cfg, reference = planted
    lake, marker = lake_for(cfg), tmp_path / "kill"
    committed = lake.files("examples", *KEY)
    run = functools.partial(dies_once_while_writing, marker)

    # No retries: the lost shard fails the run, the other shards are staged, the committed partition is untouched.
    marker.write_text("2")
    with pytest.raises(ray_cluster.exceptions.RayActorError):
        build_examples(with_execution(cfg, engine="ray", shards=3, max_retries=0), *KEY, run_shard=run)
    assert not marker.exists()
    staging = lake.staging("examples", *KEY)
    assert sorted(p.name for p in staging.glob("part-*")) == ["part-00000.parquet", "part-00002.parquet"]
    assert list(staging.glob(f".*{TEMP_SUFFIX}"))  # the half-written file of the killed worker
    assert lake.files("examples", *KEY) == committed and committed_rows(cfg) == reference

    # The rerun redoes the lost shard alone and commits the rows of a clean run, without the half-written file.
    _, _, reports = build_examples(with_execution(cfg, engine="ray", shards=3, max_retries=0), *KEY, run_shard=run)
    assert [r.resumed for r in reports] == [True, False, True]
    assert committed_rows(cfg) == reference
    assert not list(lake.partition("examples", *KEY).glob(f".*{TEMP_SUFFIX}"))

    # With retries, Ray restarts the killed actor and reruns its shard, and the one run commits the same rows.
    marker.write_text("4")
    _, _, reports = build_examples(with_execution(cfg, engine="ray", shards=2, max_retries=1), *KEY, run_shard=run)
    assert not marker.exists() and not any(r.resumed for r in reports)
    assert committed_rows(cfg) == reference

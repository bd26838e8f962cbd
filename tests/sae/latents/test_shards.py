"""The caching stage in context-range shards, in this process and on the actors of a real local Ray cluster (two
worker processes): the committed files equal the one-shard run's file for file, each worker loads the subject
model once for all its shards, a worker killed mid-shard loses nothing, and a partition missing a chunk (written
where the driver cannot see it) is never committed."""

import dataclasses
import functools
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sae.config import ExecutionConfig, load_config
from sae.corpus.stage import build_contexts
from sae.latents import shards as shards_module
from sae.latents.shards import cache_shard
from sae.latents.stage import cache_activations, cache_latents
from sae.lake import StagingError, lake_for
from sae.saes.stage import build_sae
from tests.conftest import write_config

pytestmark = pytest.mark.slow

SAE = "topk-x2"


@pytest.fixture(scope="module")
def cached(tmp_path_factory, converted_model):
    """The tiny lake (4096 tokens in 4 chunks of 1024, two hookpoints) cached in one process, one shard; with
    its committed latents, the reference."""
    cfg = load_config(write_config(tmp_path_factory.mktemp("cache-shards"), converted_model))
    build_contexts(cfg)
    cache_activations(cfg, cfg.hookpoints, progress=False)
    for hookpoint in cfg.hookpoints:
        build_sae(cfg, hookpoint, SAE, progress=False)
    partitions = [(hookpoint, SAE) for hookpoint in cfg.hookpoints]
    report = cache_latents(cfg, partitions, progress=False)
    assert report.chunks_computed == 4
    return cfg, partitions, committed(cfg, "latents", partitions)


def committed(cfg, table: str, partitions) -> dict:
    """Each partition's part files by name, with their rows."""
    lake = lake_for(cfg)
    return {key: {f.name: pq.read_table(f) for f in lake.files(table, *key)} for key in partitions}


def with_execution(cfg, **execution):
    return dataclasses.replace(cfg, execution=ExecutionConfig(**execution))


def test_local_context_shards_commit_the_files_of_one_shard(cached):
    cfg, partitions, reference = cached
    activations = [(hookpoint, None) for hookpoint in cfg.hookpoints]
    dense = committed(cfg, "activations", activations)
    progress = []
    report = cache_latents(with_execution(cfg, shards=3), partitions, progress=False,
                           shard_progress=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert (report.chunks_computed, report.chunks_skipped, report.tokens) == (4, 0, 4096)
    assert committed(cfg, "latents", partitions) == reference
    assert all(len(files) == 4 for files in reference.values())

    cache_activations(with_execution(cfg, shards=3), cfg.hookpoints, progress=False)
    assert committed(cfg, "activations", activations) == dense


def writes_elsewhere(other: Path, shard, **options):
    """cache_shard, except that the shard of chunk 1 writes into folders under `other`, as a worker on another
    machine writes to its own disk at the driver's path: it succeeds, and the driver never sees its files."""
    if shard.chunks[0] == 1:
        folders = [other / str(i) for i in range(len(shard.staging))]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        shard = dataclasses.replace(shard, staging=tuple(map(str, folders)))
    return cache_shard(shard, **options)


def test_a_partition_missing_a_chunk_is_never_committed(cached, tmp_path):
    cfg, partitions, reference = cached
    lake = lake_for(cfg)
    before = {key: [f.stat().st_mtime_ns for f in lake.files("latents", *key)] for key in partitions}
    with pytest.raises(StagingError, match=r"1 of 4 part files the shards write are not in .* \(the first: "
                                           r"part-00001.parquet\); nothing was committed"):
        cache_latents(with_execution(cfg, shards=3), partitions, progress=False,
                      run_shard=functools.partial(writes_elsewhere, tmp_path))
    for key in partitions:
        assert [f.stat().st_mtime_ns for f in lake.files("latents", *key)] == before[key]
        staged = sorted(p.name for p in lake.staging("latents", *key).glob("part-*.parquet"))
        assert staged == ["part-00000.parquet", "part-00002.parquet", "part-00003.parquet"]
    # The rerun keeps what was staged and computes the missing chunk alone.
    report = cache_latents(with_execution(cfg, shards=3), partitions, progress=False)
    assert (report.chunks_skipped, report.chunks_computed) == (3, 1)
    assert committed(cfg, "latents", partitions) == reference


def ran_in_worker(pids: Path, shard, **options):
    """cache_shard, noting the process it ran in and the subject model it used."""
    report = cache_shard(shard, **options)
    subject = id(shards_module.shared_subject(shard))  # what the shard used: loaded by then, not loaded again
    (pids / f"{os.getpid()}-{shard.chunks[0]}-{subject}").touch()
    return report


def dies_mid_shard(marker: Path, shard, **options):
    """cache_shard, except on the first attempt of the shard whose first chunk `marker` names: the worker dies
    (os._exit, as a killed or lost worker) as soon as that chunk is handed to the lake writer, before its file
    is surely written and before the shard's next chunk."""
    if marker.exists() and marker.read_text() == str(shard.chunks[0]):
        marker.unlink()
        options["after_chunk"] = lambda chunk: os._exit(1)
    return cache_shard(shard, **options)


def test_ray_context_shards_commit_the_files_of_one_process(cached, ray_cluster, workers_see_this_module, tmp_path):
    cfg, partitions, reference = cached
    progress = []
    report = cache_latents(with_execution(cfg, engine="ray", shards=3), partitions, progress=False,
                           shard_progress=lambda done, total: progress.append((done, total)),
                           run_shard=functools.partial(ran_in_worker, tmp_path))
    assert progress == [(1, 3), (2, 3), (3, 3)] and report.chunks_computed == 4
    ran = [p.name.split("-") for p in tmp_path.iterdir()]
    assert sorted(int(first) for _, first, _ in ran) == [0, 1, 2]  # contiguous_ranges(4 chunks, 3)
    pids = {pid for pid, _, _ in ran}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # both of Ray's workers, never this process
    # Three shards on two workers: one worker ran two, on the one subject model it loaded for the first.
    assert len({(pid, subject) for pid, _, subject in ran}) == 2
    assert committed(cfg, "latents", partitions) == reference


def test_a_worker_killed_mid_shard_loses_no_chunk(cached, ray_cluster, workers_see_this_module, tmp_path):
    cfg, partitions, reference = cached
    lake, marker = lake_for(cfg), tmp_path / "kill"
    before = {key: [f.stat().st_mtime_ns for f in lake.files("latents", *key)] for key in partitions}
    run = functools.partial(dies_mid_shard, marker)

    # No retries: the lost shard fails the run, the others are staged, the committed partitions are untouched.
    marker.write_text("2")
    with pytest.raises(ray_cluster.exceptions.RayActorError):
        cache_latents(with_execution(cfg, engine="ray", shards=3, max_retries=0), partitions, progress=False,
                      run_shard=run)
    assert not marker.exists()
    for key in partitions:
        staged = {p.name for p in lake.staging("latents", *key).glob("part-*.parquet")}
        assert {"part-00000.parquet", "part-00001.parquet"} <= staged and "part-00003.parquet" not in staged
        assert [f.stat().st_mtime_ns for f in lake.files("latents", *key)] == before[key]
    assert committed(cfg, "latents", partitions) == reference

    # The rerun redoes only what the killed worker lost and commits the files of a clean run.
    report = cache_latents(with_execution(cfg, engine="ray", shards=3, max_retries=0), partitions, progress=False,
                           run_shard=run)
    assert report.chunks_skipped >= 2 and report.chunks_computed == 4 - report.chunks_skipped
    assert committed(cfg, "latents", partitions) == reference
    assert not any(lake.staging("latents", *key).exists() for key in partitions)

    # With retries, Ray restarts the killed actor and reruns its shard, and the one run commits the same files.
    marker.write_text("2")
    cache_latents(with_execution(cfg, engine="ray", shards=2, max_retries=1), partitions, progress=False,
                  run_shard=run)
    assert not marker.exists()
    assert committed(cfg, "latents", partitions) == reference

"""The explanations and scoring stages in latent-range shards on a real local Ray cluster (two worker processes),
with the real SmolLM2 and embedder loaded in the workers: the committed rows equal the single-process run's, each
worker loads the LLM once for all its shards, a worker killed mid-shard loses nothing, and with the OpenAI backend
every worker sends its own requests."""

import contextlib
import dataclasses
import functools
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sae import llm as llm_module
from sae.config import ExecutionConfig
from sae.execution import contiguous_ranges
from sae.explanations import shards as explanation_shards
from sae.explanations.shards import explain_shard
from sae.explanations.stage import build_explanations, open_llm
from sae.lake import lake_for
from sae.models import BUILTIN_GGUF, builtin_gguf_folder
from sae.saes.stage import num_latents_of
from sae.scoring import shards as score_shards_module
from sae.scoring.shards import score_shard
from sae.scoring.stage import open_embedder, score_shards
from tests.conftest import build_planted_lake
from tests.sae.llm.llm_server import FaultyProxy, LlamaServer

KEY = ("layers.1", "planted")
# Three planted latents (every one explained and scored), one per shard.
FAMILIES = [{"name": "digits", "words": list("0123456789"), "explanation": "digits"},
            {"name": "articles", "words": ["a", "an"], "explanation": "the articles a and an"},
            {"name": "parentheses", "words": ["(", ")"], "explanation": "parentheses"}]
# What differs between two runs of the same prompts: when, how fast, and whether the answer came from the cache.
TIMING = ("created_at", "latency_s", "cached")
# The LLM one prompt at a time, so its answers depend on the prompt alone, not on which prompts share a batch; one
# latent per batch; no token baseline (fewer scorer prompts).
EXPLAIN = {"n_examples": 6, "max_tokens": 16, "max_attempts": 1, "batch_latents": 1,
           "token_baseline": False, "llm": {"batch_size": 1}}
# Detection in one prompt per (latent, explainer, source); the intruder, whose intruders come from other shards.
SCORE = {"scorers": ["detection", "embedding", "intruder"], "n_activating": 2, "n_silent": 2, "batch_size": 8,
         "intruder_questions": 1, "intruder_k": 2}

def committed(cfg, table: str) -> list[dict]:
    files = [str(f) for f in lake_for(cfg).files(table, *KEY)]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in pq.read_table(files).to_pylist()]


def on(cfg, **execution):
    return dataclasses.replace(cfg, execution=ExecutionConfig(**execution))


def forget(cfg, table: str) -> None:
    """Remove the committed partition of `table`: a run then makes it anew."""
    shutil.rmtree(lake_for(cfg).partition(table, *KEY), ignore_errors=True)


@contextlib.contextmanager
def without_answers(cfg, aside: Path):
    """The response cache moved `aside` for the duration, so every prompt is asked of the model; then put back
    beside the answers written meanwhile."""
    cache = lake_for(cfg).root / "llm_cache"
    shutil.move(cache, aside)
    try:
        yield
    finally:
        cache.mkdir(exist_ok=True)
        for path in aside.iterdir():
            shutil.move(path, cache / path.name)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, converted_model):
    """A planted lake of three latents explained and scored in this process, one shard; with its rows, the reference."""
    cfg = build_planted_lake(tmp_path_factory.mktemp("llm-shards"), converted_model, FAMILIES, explain=EXPLAIN,
                             score=SCORE)
    embedder = open_embedder(cfg)
    with open_llm(cfg, cfg.explain.llm) as client:
        build_explanations(cfg, *KEY, client, progress=False)
        score_shards(cfg, *KEY, client, embedder, progress=False)
    ranges = contiguous_ranges(num_latents_of(cfg, *KEY), 3)  # the shards of every stage: the same latent ranges
    return cfg, {table: committed(cfg, table) for table in ("explanations", "scores")}, ranges


def noting_loads(folder: Path, shard, **kwargs):
    """explain_shard, noting its process and whether that process had an LLM loaded before and after."""
    before = bool(llm_module._SHARED)
    report = explain_shard(shard, **kwargs)
    (folder / f"{os.getpid()}-{shard.latent_range[0]}-{before}-{bool(llm_module._SHARED)}").touch()
    return report


def dies_at_a_write(module, marker: Path, run, writes_first: bool, shard, **kwargs):
    """`run` (a stage's shard function), except on the first attempt of the shard `marker` names: the worker dies
    (os._exit, as a killed or lost worker) at its first write of a file, right after it (`writes_first`: an
    explanation shard's first batch) or instead of it (a scores shard's part)."""
    if marker.exists() and marker.read_text() == str(shard.latent_range[0]):
        marker.unlink()
        write = module.write_parquet

        def die_at_write(table, path, **options):
            if writes_first:
                write(table, path, **options)
            os._exit(1)

        module.write_parquet = die_at_write  # only in this worker, which dies with it
    return run(shard, **kwargs)


@pytest.mark.slow
def test_explanations_on_ray_workers_are_the_rows_of_one_process(planted, ray_cluster, workers_see_this_module,
                                                                 tmp_path):
    cfg, reference, ranges = planted
    forget(cfg, "explanations")
    progress, ran = [], tmp_path / "ran"
    ran.mkdir()
    with without_answers(cfg, tmp_path / "answers"):  # every answer asked again, of the workers' own models
        table, reports = build_explanations(on(cfg, engine="ray", shards=3), *KEY, None, progress=False,
                                            shard_progress=lambda done, total: progress.append((done, total)),
                                            run_shard=functools.partial(noting_loads, ran))
    assert progress == [(1, 3), (2, 3), (3, 3)] and [r.latent_range for r in reports] == ranges
    assert sum(r.llm_calls for r in reports) == len(FAMILIES) and not any(r.resumed for r in reports)
    assert committed(cfg, "explanations") == reference["explanations"]
    assert table.num_rows == len(reference["explanations"]) and len(lake_for(cfg).files("explanations", *KEY)) == 3
    assert {r["explainer"] for r in reference["explanations"]} == {"llm", "truth"}
    notes = [p.name.split("-") for p in ran.iterdir()]
    assert str(os.getpid()) not in {pid for pid, *_ in notes}  # in Ray's workers, not this process
    loads = [pid for pid, _, before, after in notes if before == "False" and after == "True"]
    assert len(loads) == len(set(loads))  # a worker loads the model once, for every shard it runs


@pytest.mark.slow
def test_scores_on_ray_workers_are_the_rows_of_one_process(planted, ray_cluster, workers_see_this_module):
    cfg, reference, ranges = planted
    forget(cfg, "scores")
    table, reports = score_shards(on(cfg, engine="ray", shards=3), *KEY, None, None, progress=False)
    assert [r.latent_range for r in reports] == ranges and not any(r.resumed for r in reports)
    # Every prompt the shards made is one the single process made: all answered from the response cache.
    assert sum(r.llm_calls for r in reports) == 0
    rows = committed(cfg, "scores")
    assert rows == reference["scores"] and table.num_rows == len(rows)
    # Controls and intruders cross the shards: another latent's explanation, another latent's window.
    controls = [r for r in rows if r["source"] == "control" and r["explanation_latent"] is not None]
    assert controls and all(r["explanation_latent"] != r["latent"] for r in controls)
    assert {r["scorer"] for r in rows} == {"detection", "embedding", "intruder"}


@pytest.mark.slow
def test_a_worker_killed_mid_shard_loses_no_explanations(planted, ray_cluster, workers_see_this_module, tmp_path):
    cfg, reference, ranges = planted
    lake, marker = lake_for(cfg), tmp_path / "kill"
    llm_latents = sorted({r["latent"] for r in reference["explanations"] if r["explainer"] == "llm"})
    victim = next(i for i, (first, end) in enumerate(ranges) if any(first <= x < end for x in llm_latents))
    run = functools.partial(dies_at_a_write, explanation_shards, marker, explain_shard, True)

    # No retries: the shard dies after staging its first batch, the run fails, nothing is committed.
    forget(cfg, "explanations")
    marker.write_text(str(ranges[victim][0]))
    with pytest.raises(ray_cluster.exceptions.RayActorError):
        build_explanations(on(cfg, engine="ray", shards=3, max_retries=0), *KEY, None, progress=False, run_shard=run)
    staging = lake.staging("explanations", *KEY)
    staged = sorted(p.name for p in staging.glob("part-*.parquet"))
    assert f"part-{victim:05d}-00000.parquet" in staged and f"part-{victim:05d}.parquet" not in staged
    assert not lake.files("explanations", *KEY)

    # The rerun redoes the lost shard alone, from its batch, and commits the rows of a clean run and no batch.
    _, reports = build_explanations(on(cfg, engine="ray", shards=3, max_retries=0), *KEY, None, progress=False,
                                    run_shard=run)
    assert [r.resumed for r in reports] == [i != victim for i in range(3)]
    assert committed(cfg, "explanations") == reference["explanations"]
    assert [p.name for p in lake.files("explanations", *KEY)] == [f"part-{i:05d}.parquet" for i in range(3)]

    # With retries, Ray restarts the killed actor and reruns its shard, and the one run commits the same rows.
    forget(cfg, "explanations")
    marker.write_text(str(ranges[victim][0]))
    _, reports = build_explanations(on(cfg, engine="ray", shards=3, max_retries=1), *KEY, None, progress=False,
                                    run_shard=run)
    assert not marker.exists() and not any(r.resumed for r in reports)
    assert committed(cfg, "explanations") == reference["explanations"]


@pytest.mark.slow
def test_a_worker_killed_mid_shard_loses_no_scores(planted, ray_cluster, workers_see_this_module, tmp_path):
    cfg, reference, ranges = planted
    lake, marker = lake_for(cfg), tmp_path / "kill"
    run = functools.partial(dies_at_a_write, score_shards_module, marker, score_shard, False)
    committed_files = lake.files("scores", *KEY)
    marker.write_text(str(ranges[1][0]))
    with pytest.raises(ray_cluster.exceptions.RayActorError):
        score_shards(on(cfg, engine="ray", shards=3, max_retries=0), *KEY, None, None, progress=False, run_shard=run)
    assert sorted(p.name for p in lake.staging("scores", *KEY).glob("part-*.parquet")) == [
        "part-00000.parquet", "part-00002.parquet"]
    assert lake.files("scores", *KEY) == committed_files and committed(cfg, "scores") == reference["scores"]

    # The rerun redoes the lost shard alone (its answers from the response cache) and commits a clean run's rows.
    _, reports = score_shards(on(cfg, engine="ray", shards=3, max_retries=0), *KEY, None, None, progress=False,
                              run_shard=run)
    assert [r.resumed for r in reports] == [True, False, True] and committed(cfg, "scores") == reference["scores"]


def noting_process(folder: Path, shard, **kwargs):
    """explain_shard, noting the process it ran in."""
    (folder / f"{os.getpid()}-{shard.latent_range[0]}").touch()
    return explain_shard(shard, **kwargs)


@pytest.mark.slow
def test_the_openai_client_fans_out_from_every_worker(tmp_path, converted_model, ray_cluster,
                                                      workers_see_this_module):
    """The explanation shards on two Ray workers with the OpenAI backend, against llama.cpp's server on 127.0.0.1
    behind the counting proxy, which holds the first request until a second is in flight: each worker's client
    sends its own shards' requests (one at a time each, `max_in_flight: 1`), the two side by side."""
    pytest.importorskip("xllamacpp", reason="the test server is llama.cpp's, from the xllamacpp package")
    ran = tmp_path / "ran"
    ran.mkdir()
    server = LlamaServer(builtin_gguf_folder() / BUILTIN_GGUF).start()
    try:
        with FaultyProxy(server.base_url, gather=2) as proxy:
            llm = {"backend": "openai", "base_url": proxy.base_url, "api_key": "sk-unused", "max_in_flight": 1}
            cfg = build_planted_lake(tmp_path / "lake", converted_model, FAMILIES, explain={**EXPLAIN, "llm": llm},
                                     score=SCORE)
            _, reports = build_explanations(on(cfg, engine="ray", shards=3), *KEY, None, progress=False,
                                            run_shard=functools.partial(noting_process, ran))
    finally:
        server.stop()
    assert sum(r.llm_calls for r in reports) == proxy.forwarded == len(FAMILIES)  # all sent by the workers
    assert proxy.peak_in_flight == 2
    pids = {p.name.split("-")[0] for p in ran.iterdir()}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    answered = [r for r in committed(cfg, "explanations") if r["explainer"] == "llm"]
    assert len(answered) == len(FAMILIES) and {r["backend"] for r in answered} == {"openai"}
    assert all(r["explanation"] for r in answered)

"""Benchmark of the execution engines: the cost of a shard, and the sharded example selection and explanations on
Ray.

    python benchmarks/scale.py                       # 10 M non-zeros, 8k latents, 4 shards; 8 explained latents
    python benchmarks/scale.py --nnz 100000000       # the size of benchmarks/selection.py
    python benchmarks/scale.py --explain 0           # without the explanation stage (the LLM's part, ~2 minutes)
    python benchmarks/scale.py --cache-tokens 0      # without the caching stage (the subject model's part)

On the synthetic latents table of benchmarks/selection.py (generated once under benchmarks/.data/), prints:
  - per-shard overhead: a no-op shard in this process against a no-op Ray task (a Ray instance on this machine,
    started once; its start-up time is printed apart);
  - the example selection of every latent: in this process as one shard (today's path) and in --shards latent
    ranges (DuckDB on every core), and in those ranges as Ray tasks of one CPU each (one DuckDB thread) on 1 and
    on 2 worker CPUs, as non-zeros per second.
  - the explanation stage with the real SmolLM2 (the offline default, llama.cpp, one prompt at a time) on
    --explain synthetic latents: in this process as one shard, and in 2 shards as Ray tasks on 1 and on 2 worker
    CPUs, each worker loading the model once (cold: the run that starts the workers and loads it; warm: the next
    one), as explanations per minute. On 2 cores 2 workers can at most double the rate; llama.cpp runs on every
    core in each worker (its answers depend on its thread count), so two of them share the cores.
  - the caching stage (dense activations of one mid-depth layer of the real SmolLM2-135M) over --cache-tokens
    tokens of the Wikipedia sample: in this process as one shard (torch on every core), and in 4 context ranges
    on Ray actors of one CPU each (Ray gives each one torch thread) on 1 and on 2 workers, cold and warm as for
    the explanations, as tokens per second.
Every sharded run is checked to give the same rows as the one-shard run.

Then the cost of the lake on S3 against a local lake, on moto's S3 server on 127.0.0.1 (started here): moto on
localhost has none of real S3's latency or bandwidth limits, so these are the costs of the lake's own work
(widening float16 for Delta, copies, Delta log commits), a floor for real S3. For the latents stage: its commit
of a partition of every synthetic non-zero (local: a rename; S3: upload and one Delta commit), in seconds and in
non-zeros per second to set beside the stage's own rate, and the bytes stored per non-zero. For selection: the
read of that partition by a fresh working copy (S3: its download), the selection in one shard, and the commit of
the examples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
# Ray's workers import saelake from this checkout too (they inherit the environment of the instance's start).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from selection import generate  # noqa: E402  (the synthetic latents table, shared with benchmarks/selection.py)

from sae.config import ExamplesConfig, ExecutionConfig, ExplainConfig, LLMConfig  # noqa: E402
from sae.examples.shards import ExampleShard, select_shard  # noqa: E402
from sae.execution import contiguous_ranges  # noqa: E402
from sae.execution.local import LocalEngine  # noqa: E402
from sae.execution.ray import RayEngine  # noqa: E402


def no_op(shard: int) -> int:
    return shard


def shard_overhead(engine, n: int) -> float:
    """Milliseconds per no-op shard, over `n` of them."""
    start = time.perf_counter()
    engine.map(no_op, list(range(n)))
    return (time.perf_counter() - start) / n * 1e3


def selection_shards(engine, files: list[Path], contexts: Path, n_latents: int, shards: int, staging: Path,
                     neighbours: pa.Table) -> list[ExampleShard]:
    staging.mkdir(parents=True)
    return [ExampleShard(tuple(map(str, files)), str(contexts), "bench", ExamplesConfig(), 0, latent_range,
                         neighbours.filter((pa.compute.field("latent") >= latent_range[0])
                                           & (pa.compute.field("latent") < latent_range[1])),
                         examples_part=str(staging / f"part-{i:05d}.parquet"),
                         coverage_part=str(staging / f"coverage-{i:05d}.parquet"),
                         threads=engine.threads_per_shard)
            for i, latent_range in enumerate(contiguous_ranges(n_latents, shards))]


def timed_selection(engine, shards: list[ExampleShard]) -> tuple[float, pa.Table]:
    start = time.perf_counter()
    engine.map(select_shard, shards)
    seconds = time.perf_counter() - start
    return seconds, pa.concat_tables(pq.read_table(s.examples_part) for s in shards)


# A toy vocabulary for the synthetic explanation prompts (the LLM reads words, not a tokenizer's pieces).
WORDS = ("the", "river", "bank", "money", "loan", "water", "flows", "green", "city", "runs", "fast", "old", "song",
         "light", "stone", "bridge")


def decode(ids) -> list[str]:
    return [f" {WORDS[i % len(WORDS)]}" for i in ids]


def explain_inputs(n_latents: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """Train windows (3 top, 3 quantile, 16 tokens each) of `n_latents` synthetic latents, and their coverage."""
    import numpy as np

    from sae.examples.selection import coverage

    rng, rows = np.random.default_rng(seed), []
    for latent in range(n_latents):
        for i in range(6):
            acts = [0.0] * 16
            acts[8] = float(6 - i)
            rows.append({"latent": latent, "split": "train", "kind": "top" if i < 3 else "quantile", "bin": i % 2,
                         "ctx_id": 10 * latent + i, "start": 0, "peak_act": acts[8],
                         "tokens": rng.integers(0, len(WORDS), 16).tolist(), "acts": acts})
    examples = pa.Table.from_pylist(rows)
    return examples, coverage(examples, ExamplesConfig(n_top=3, n_train_quantile=3))


EXPLAIN = ExplainConfig(llm=LLMConfig(batch_size=1), latents="all", n_examples=6, max_tokens=24, max_attempts=1,
                        batch_latents=1, token_baseline=False)
TIMING = ("created_at", "latency_s", "cached")


def timed_explanations(lake_root: Path, inputs: tuple[pa.Table, pa.Table], execution: ExecutionConfig,
                       client=None) -> tuple[float, list[dict]]:
    """Seconds to explain every synthetic latent into `lake_root`, and the rows."""
    from sae.explanations.explainer import explain_shards
    from sae.lake import Lake
    from sae.lineage import Provenance

    provenance = Provenance("explanations", "bench|x", "bench", "1", {}, {})
    # No earlier run's rows: a committed partition of the same fingerprint would serve its latents unasked.
    shutil.rmtree(Lake(lake_root).partition("explanations", "bench", "x"), ignore_errors=True)
    start = time.perf_counter()
    table, _ = explain_shards(Lake(lake_root), "bench", "x", *inputs, EXPLAIN, client, decode, 0, provenance,
                              execution=execution)
    seconds = time.perf_counter() - start
    return seconds, [{k: v for k, v in row.items() if k not in TIMING} for row in table.to_pylist()]


def start_ray(cpus: int, temp: str):
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _temp_dir=temp, logging_level="WARNING",
             object_store_memory=200 * 2**20)
    return ray, time.perf_counter() - start


LAYER, SAE = "layers.6", "bench"


def object_store_costs(files: list[Path], contexts: Path, n_latents: int, neighbours: pa.Table, nnz: int,
                       work: Path) -> list[tuple[str, str, str]]:
    """(step, local, S3) rows: the latents commit, and the selection's read, select and commit (module doc)."""
    import boto3
    from botocore.exceptions import EndpointConnectionError

    from sae.lake import Lake
    from sae.lake.s3 import CACHE_ENV, store_for

    with socket.socket() as probe:  # a free port of 127.0.0.1
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Its own process: in a thread of this one, moto could not answer delta-rs, which holds the GIL meanwhile.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    costs = {}
    try:
        for _ in range(100):
            try:
                boto3.client("s3").create_bucket(Bucket="bench")
                break
            except EndpointConnectionError:  # not listening yet
                time.sleep(0.2)
        else:
            raise RuntimeError(f"moto's S3 server did not start on port {port}")
        for kind, location in (("local", str(work / "lake")), ("s3", "s3://bench/lake")):
            os.environ[CACHE_ENV] = str(work / f"writer-{kind}")  # the working copy of the machine that commits
            lake = Lake(location)
            staging = lake.open_staging("latents", LAYER, SAE)
            for i, path in enumerate(files):  # the stage's part files, staged (not timed)
                shutil.copy(path, staging / f"part-{i:05d}.parquet")
            start = time.perf_counter()
            lake.commit(staging, "latents", LAYER, SAE)
            commit = time.perf_counter() - start
            stored = sum(f.stat().st_size for f in lake.files("latents", LAYER, SAE))
            os.environ[CACHE_ENV] = str(work / f"reader-{kind}")  # another machine's working copy, empty
            store_for.cache_clear()
            reader = Lake(location)
            start = time.perf_counter()
            parts = reader.files("latents", LAYER, SAE)
            read = time.perf_counter() - start
            engine = LocalEngine()
            shards = selection_shards(engine, parts, contexts, n_latents, 1, work / f"select-{kind}", neighbours)
            select, examples = timed_selection(engine, shards)
            staging = reader.open_staging("examples", LAYER, SAE)
            shutil.copy(shards[0].examples_part, staging / "part-00000.parquet")
            start = time.perf_counter()
            reader.commit(staging, "examples", LAYER, SAE)
            costs[kind] = {"commit": commit, "bytes": stored / nnz, "read": read, "select": select,
                           "examples": time.perf_counter() - start, "rows": examples}
    finally:
        server.terminate()
        server.wait()
    local, s3 = costs["local"], costs["s3"]
    assert s3["rows"].cast(local["rows"].schema).equals(local["rows"]), "the S3 lake selected other rows"
    return [("latents: commit (s)", f"{local['commit']:.2f}", f"{s3['commit']:.2f}"),
            ("latents: commit (M nnz/s)", f"{nnz / local['commit'] / 1e6:.1f}", f"{nnz / s3['commit'] / 1e6:.1f}"),
            ("latents: bytes per non-zero", f"{local['bytes']:.2f}", f"{s3['bytes']:.2f}"),
            ("selection: read partition (s)", f"{local['read']:.2f}", f"{s3['read']:.2f}"),
            ("selection: select (s)", f"{local['select']:.1f}", f"{s3['select']:.1f}"),
            ("selection: commit examples (s)", f"{local['examples']:.2f}", f"{s3['examples']:.2f}"),
            ("selection: total (s)", *(f"{c['read'] + c['select'] + c['examples']:.1f}" for c in (local, s3)))]


def main() -> None:
    import torch

    from sae.examples.neighbours import nearest_latents

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnz", type=int, default=10_000_000)
    parser.add_argument("--latents", type=int, default=8192)
    parser.add_argument("--shards", type=int, default=4, help="latent ranges of the Ray runs")
    parser.add_argument("--no-ops", type=int, default=200, help="no-op shards timed for the per-shard overhead")
    parser.add_argument("--explain", type=int, default=8, help="latents explained by SmolLM2 (0: none)")
    parser.add_argument("--cache-tokens", type=int, default=32_768, help="tokens the caching runs cover (0: none)")
    args = parser.parse_args()

    files, contexts = generate(REPO / "benchmarks" / ".data" / f"select-{args.nnz}-{args.latents}", args.nnz,
                               args.latents)
    nnz = sum(pq.read_metadata(f).num_rows for f in files)
    decoder = torch.randn(args.latents, 576, generator=torch.Generator().manual_seed(0))
    neighbours = nearest_latents(decoder, ExamplesConfig().neighbour_latents)
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="scale-", dir="/tmp") as temp:  # short: Ray's socket paths
        work = Path(temp)
        local = LocalEngine()
        local_ms = shard_overhead(local, args.no_ops)
        seconds, reference = timed_selection(
            local, selection_shards(local, files, contexts, args.latents, 1, work / "local", neighbours))
        rows.append(("local, 1 shard (in this process)", f"{seconds:.1f}", f"{nnz / seconds / 1e6:.2f}"))
        # The same ranges as the Ray runs, in this process: what splitting costs apart from Ray.
        seconds, table = timed_selection(local, selection_shards(
            local, files, contexts, args.latents, args.shards, work / "local-shards", neighbours))
        assert table.equals(reference), "the sharded selection gave other rows than the one-shard run"
        rows.append((f"local, {args.shards} shards", f"{seconds:.1f}", f"{nnz / seconds / 1e6:.2f}"))
        for cpus in (1, 2):
            ray, startup = start_ray(cpus, str(work / f"ray{cpus}"))
            try:
                engine = RayEngine(None, max_retries=3, cpus_per_shard=1)  # one DuckDB thread per task
                engine.map(no_op, list(range(2 * cpus)))  # the workers started, as on a running cluster
                ray_ms = shard_overhead(engine, args.no_ops)
                seconds, table = timed_selection(engine, selection_shards(
                    engine, files, contexts, args.latents, args.shards, work / f"shards{cpus}", neighbours))
            finally:
                ray.shutdown()
            assert table.equals(reference), "the sharded selection gave other rows than the one-shard run"
            rows.append((f"ray, {args.shards} shards, {cpus} worker{'s' * (cpus > 1)}", f"{seconds:.1f}",
                         f"{nnz / seconds / 1e6:.2f}"))
            print(f"ray with {cpus} CPU(s): started in {startup:.1f} s; no-op shard {ray_ms:.2f} ms "
                  f"(in this process {local_ms:.4f} ms)")
        explained = explanation_runs(args.explain, work) if args.explain else []
        cached = caching_runs(args.cache_tokens, work) if args.cache_tokens else []
    print(f"\nexample selection, {nnz:,} non-zeros, {args.latents:,} latents, {os.cpu_count()} cores")
    print(f"{'run':<34} {'seconds':>8} {'M nnz/s':>8}")
    for run, seconds, rate in rows:
        print(f"{run:<34} {seconds:>8} {rate:>8}")
    if explained:
        print(f"\nexplanations by SmolLM2 (llama.cpp, one prompt at a time), {args.explain} latents, "
              f"{os.cpu_count()} cores: 2 workers can at most double the rate here")
        print(f"{'run':<34} {'seconds':>8} {'expl/min':>8}")  # cold: workers started and the model loaded
        for run, seconds, rate in explained:
            print(f"{run:<34} {seconds:>8} {rate:>8}")
    if cached:
        print(f"\ncaching activations of {CACHED_LAYER} of SmolLM2-135M, {args.cache_tokens:,} tokens, "
              f"{os.cpu_count()} cores")
        print(f"{'run':<34} {'seconds':>8} {'tok/s':>8}")
        for run, seconds, rate in cached:
            print(f"{run:<34} {seconds:>8} {rate:>8}")

    with tempfile.TemporaryDirectory(prefix="scale-lakes-") as temp:
        costs = object_store_costs(files, contexts, args.latents, neighbours, nnz, Path(temp))
    print(f"\nthe lake on S3 (moto on 127.0.0.1: not real S3 latency) against a local lake, {nnz:,} non-zeros")
    print(f"{'step':<34} {'local':>8} {'s3':>8}")
    for step, local, s3 in costs:
        print(f"{step:<34} {local:>8} {s3:>8}")


def explanation_runs(n_latents: int, work: Path) -> list[tuple[str, str, str]]:
    """The explanation stage in this process and on 1 and 2 Ray workers; the model's load time printed apart."""
    from sae.llm import shared_client

    # Two sets of windows: the warm runs must ask new prompts of the model their workers kept (a worker's client
    # keeps the answers it saw), in the same lake (a worker's model is the lake's).
    inputs, rows = {start: explain_inputs(n_latents, seed) for seed, start in enumerate(("cold", "warm"))}, []
    start = time.perf_counter()
    client = shared_client(EXPLAIN.llm, work / "explain-local")  # what each worker does once, before its first shard
    print(f"SmolLM2 (llama.cpp) loaded in {time.perf_counter() - start:.1f} s in this process")
    seconds, reference = timed_explanations(work / "explain-local", inputs["cold"], ExecutionConfig(), client)
    rows.append(("local, 1 shard (in this process)", f"{seconds:.1f}", f"{n_latents / seconds * 60:.1f}"))
    references = {"cold": reference,
                  "warm": timed_explanations(work / "explain-local", inputs["warm"], ExecutionConfig(), client)[1]}
    assert references["warm"] != reference, "the second set of windows was not explained anew"
    for cpus in (1, 2):
        ray, _ = start_ray(cpus, str(work / f"ray-explain{cpus}"))
        try:
            # Two shards per run: on 1 worker the second reuses the model the first loaded. The first run starts
            # the workers and loads the model in each (cold); the second finds them loaded (warm): the difference
            # is what starting a worker costs.
            for start in ("cold", "warm"):
                seconds, explained = timed_explanations(work / f"explain-ray{cpus}", inputs[start],
                                                        ExecutionConfig(engine="ray", shards=2))
                assert explained == references[start], "the explanations on Ray differ from the one-process run"
                rows.append((f"ray, 2 shards, {cpus} worker{'s' * (cpus > 1)}, {start}", f"{seconds:.1f}",
                             f"{n_latents / seconds * 60:.1f}"))
        finally:
            ray.shutdown()
    return rows


CACHED_LAYER = "layers.15"  # of SmolLM2-135M's 30: the forward pass stops there


def caching_runs(n_tokens: int, work: Path) -> list[tuple[str, str, str]]:
    """The activations of CACHED_LAYER over `n_tokens`, in this process and in 4 context ranges on 1 and 2 Ray
    workers, each run into a lake of its own with the same contexts; every run's files equal the first's."""
    from sae.config import parse_config
    from sae.corpus.stage import build_contexts
    from sae.lake import Lake
    from sae.latents.stage import cache_activations
    from sae.models import BUILTIN_MODEL, builtin_model_folder

    model = builtin_model_folder(REPO / "lake")  # converted once, where `make demo` keeps it
    contexts = None

    def lake_with_contexts(name: str, **execution):
        lake = work / name
        (lake / "models").mkdir(parents=True)
        (lake / "models" / BUILTIN_MODEL).symlink_to(model, target_is_directory=True)
        cfg = parse_config({"lake": str(lake), "n_tokens": n_tokens, "ctx_len": 64, "batch_size": 16,
                            "chunk_tokens": n_tokens // 8, "layers": [{"hookpoint": CACHED_LAYER}],
                            "saes": [{"name": "neurons", "neurons": {}}], "execution": execution})
        nonlocal contexts
        if contexts is None:
            build_contexts(cfg)
            contexts = Lake(lake).partition("contexts")
        else:
            shutil.copytree(contexts, Lake(lake).partition("contexts"))
        return cfg

    def timed(cfg) -> tuple[float, list[pa.Table]]:
        start = time.perf_counter()
        cache_activations(cfg, [CACHED_LAYER], progress=False)
        seconds = time.perf_counter() - start
        return seconds, [pq.read_table(f) for f in Lake(cfg.lake).files("activations", CACHED_LAYER)]

    seconds, reference = timed(lake_with_contexts("cache-local"))
    rows = [("local, 1 shard (in this process)", f"{seconds:.1f}", f"{n_tokens / seconds:,.0f}")]
    for cpus in (1, 2):
        ray, _ = start_ray(cpus, str(work / f"ray-cache{cpus}"))
        try:
            cfg = lake_with_contexts(f"cache-ray{cpus}", engine="ray", shards=4)
            for start in ("cold", "warm"):  # cold: the workers start and load the model; warm: loaded
                # The same lake again (the worker's model is the lake's), its activations removed first.
                shutil.rmtree(Lake(cfg.lake).partition("activations", CACHED_LAYER), ignore_errors=True)
                seconds, files = timed(cfg)
                assert files == reference, "the activations cached on Ray differ from the one-process run"
                rows.append((f"ray, 4 shards, {cpus} worker{'s' * (cpus > 1)}, {start}", f"{seconds:.1f}",
                             f"{n_tokens / seconds:,.0f}"))
        finally:
            ray.shutdown()
    return rows


if __name__ == "__main__":
    main()

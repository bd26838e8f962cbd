"""Benchmark of the execution engines: the cost of a shard, and the sharded example selection on Ray.

    python benchmarks/scale.py                       # 10 M non-zeros, 8k latents, 4 shards
    python benchmarks/scale.py --nnz 100000000       # the size of benchmarks/selection.py

On the synthetic latents table of benchmarks/selection.py (generated once under benchmarks/.data/), prints:
  - per-shard overhead: a no-op shard in this process against a no-op Ray task (a Ray instance on this machine,
    started once; its start-up time is printed apart);
  - the example selection of every latent: in this process as one shard (today's path) and in --shards latent
    ranges (DuckDB on every core), and in those ranges as Ray tasks of one CPU each (one DuckDB thread) on 1 and
    on 2 worker CPUs, as non-zeros per second.
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

from sae.config import ExamplesConfig  # noqa: E402
from sae.examples.shards import ExampleShard, select_shard  # noqa: E402
from sae.execution import latent_ranges  # noqa: E402
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
            for i, latent_range in enumerate(latent_ranges(n_latents, shards))]


def timed_selection(engine, shards: list[ExampleShard]) -> tuple[float, pa.Table]:
    start = time.perf_counter()
    engine.map(select_shard, shards)
    seconds = time.perf_counter() - start
    return seconds, pa.concat_tables(pq.read_table(s.examples_part) for s in shards)


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
    print(f"\nexample selection, {nnz:,} non-zeros, {args.latents:,} latents, {os.cpu_count()} cores")
    print(f"{'run':<34} {'seconds':>8} {'M nnz/s':>8}")
    for run, seconds, rate in rows:
        print(f"{run:<34} {seconds:>8} {rate:>8}")
    with tempfile.TemporaryDirectory(prefix="scale-lakes-") as temp:
        costs = object_store_costs(files, contexts, args.latents, neighbours, nnz, Path(temp))
    print(f"\nthe lake on S3 (moto on 127.0.0.1: not real S3 latency) against a local lake, {nnz:,} non-zeros")
    print(f"{'step':<34} {'local':>8} {'s3':>8}")
    for step, local, s3 in costs:
        print(f"{step:<34} {local:>8} {s3:>8}")


if __name__ == "__main__":
    main()

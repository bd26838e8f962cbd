"""The Ray engine's pool of actors on a real local Ray cluster (two CPUs, no GPU): the workers of one kind serve
every map of that kind, another kind retires them, GPUs are reserved only by the stages that run models, and a
cluster too small for one worker is named."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sae.execution import LLM, SELECTION, SUBJECT_MODEL
from sae.execution.ray import RayEngine

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def worker_pid(shard) -> int:
    return os.getpid()


def fails_on_two(shard) -> int:
    if shard == 2:
        raise ValueError("shard 2 is bad input")
    return os.getpid()


def test_workers_serve_every_map_of_their_kind_and_retire_for_another(ray_cluster):
    engine = RayEngine(None, max_retries=0)
    selection = engine.map(worker_pid, range(6))
    assert len(set(selection)) == 2 and os.getpid() not in selection  # as many workers as the CPUs hold
    assert set(engine.map(worker_pid, range(6), workers=SELECTION)) == set(selection)  # the same processes
    models = engine.map(worker_pid, range(6), workers=SUBJECT_MODEL)
    assert len(set(models)) == 2 and not set(models) & set(selection)  # new workers; the old ones retired
    one = set(RayEngine(None, max_retries=0, workers=1).map(worker_pid, range(3), workers=LLM))
    both = set(RayEngine(None, max_retries=0).map(worker_pid, range(3), workers=LLM))
    assert len(one) == 1 and len(both) == 2 and one < both  # `workers` caps the pool; a later map tops it up


def test_a_shard_that_raises_fails_the_map_after_the_others_ran(ray_cluster):
    engine = RayEngine(None, max_retries=3)
    progress = []
    with pytest.raises(ray_cluster.exceptions.RayTaskError, match="shard 2 is bad input"):
        engine.map(fails_on_two, range(5), lambda done, total: progress.append(done))
    assert progress == [1, 2, 3, 4, 5]  # every shard was run once, the bad one not retried
    assert len(set(engine.map(worker_pid, range(4)))) == 2  # its worker is still alive and serving


def test_gpus_are_reserved_by_the_model_stages_alone(ray_cluster):
    engine = RayEngine(None, max_retries=0, gpus_per_shard=1)
    assert len(engine.map(worker_pid, range(2), workers=SELECTION)) == 2  # plain DuckDB: no GPU asked for
    with pytest.raises(RuntimeError, match=r"has 2 CPUs and 0 GPUs, too few for one shard worker \(1 CPUs, 1 "
                                           r"GPUs\); lower execution.cpus_per_shard / gpus_per_shard"):
        engine.map(worker_pid, range(2), workers=LLM)
    with pytest.raises(RuntimeError, match="has 2 CPUs"):
        RayEngine(None, max_retries=0, cpus_per_shard=3).map(worker_pid, range(2))


# Two Ray instances one after the other in one process (a notebook restarting Ray, a benchmark): the second
# numbers its first job as the first did, and must get workers of its own.
TWO_INSTANCES = """
import os, sys
import ray
from sae.execution.ray import RayEngine

for run in range(2):
    ray.init(address="local", num_cpus=1 + run, include_dashboard=False, _temp_dir=f"{sys.argv[1]}/{run}",
             object_store_memory=100 * 2**20, logging_level="WARNING")
    pids = RayEngine(None, max_retries=0).map(lambda shard: os.getpid(), [0, 1])
    print(ray.get_runtime_context().get_job_id(), *sorted(set(pids)))
    ray.shutdown()
"""


def test_a_later_ray_instance_in_the_same_process_gets_workers_of_its_own(tmp_path):
    temp = tempfile.mkdtemp(prefix="ray2-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    try:
        run = subprocess.run([sys.executable, "-c", TWO_INSTANCES, temp], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    (first_job, *first), (second_job, *second) = (line.split() for line in run.stdout.splitlines())
    assert first_job == second_job  # the same job id
    assert len(first) == 1 and len(second) == 2 and not set(first) & set(second)  # workers of its own

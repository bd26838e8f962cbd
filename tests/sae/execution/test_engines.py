"""The execution section of the config, the split into contiguous ranges, and the local engine."""

import pytest

from sae.config import ExecutionConfig, parse_config
from sae.execution import contiguous_ranges, engine_for
from sae.execution.local import LocalEngine
from sae.execution.ray import RayEngine
from tests.sae.test_config import _error, _raw


def test_the_execution_section_parses_and_defaults_to_one_local_shard():
    assert parse_config(_raw()).execution == ExecutionConfig("local", None, 1, 3, 1)
    cfg = parse_config(_raw(execution={"engine": "ray", "address": "ray://head.cluster:10001", "shards": 64}))
    assert cfg.execution == ExecutionConfig("ray", "ray://head.cluster:10001", 64, 3, 1)
    assert isinstance(engine_for(cfg.execution), RayEngine) and engine_for(cfg.execution).max_retries == 3
    assert isinstance(engine_for(ExecutionConfig()), LocalEngine)
    gpu = parse_config(_raw(execution={"engine": "ray", "gpus_per_shard": 1, "workers": 8})).execution
    assert (gpu.gpus_per_shard, gpu.workers) == (1.0, 8)
    assert (engine_for(gpu).gpus_per_shard, engine_for(gpu).workers) == (1.0, 8)


@pytest.mark.parametrize("execution, expected", [
    ({"engin": "ray"}, "unknown key 'engin'; did you mean 'engine'?"),
    ({"engine": "spark"}, "execution.engine 'spark' is unknown"),
    ({"shards": 0}, "execution.shards and cpus_per_shard must be positive"),
    ({"max_retries": -1}, "max_retries 0 or more"),
    ({"cpus_per_shard": 0}, "got shards 1, cpus_per_shard 0"),
    ({"gpus_per_shard": -1}, "gpus_per_shard must be 0 or more and workers positive (or null), got gpus_per_shard -1"),
    ({"workers": 0}, "got gpus_per_shard 0.0, workers 0"),
    ({"gpus_per_shard": "one"}, "execution.gpus_per_shard: expected float, got 'one'"),
    ({"address": "auto"}, "set `execution.engine: ray` with it"),
    ({"engine": "ray", "address": "http://head:8265"}, "is not a Ray address"),
])
def test_bad_execution_settings_are_named(execution, expected):
    assert expected in _error(_raw(execution=execution))


def test_contiguous_ranges_tile_the_items_in_near_equal_parts():
    assert contiguous_ranges(8, 3) == [(0, 2), (2, 5), (5, 8)]
    assert contiguous_ranges(3, 10) == [(0, 1), (1, 2), (2, 3)]  # never an empty range
    ranges = contiguous_ranges(32_768, 7)
    assert ranges[0][0] == 0 and ranges[-1][1] == 32_768
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(e - f for f, e in ranges) - min(e - f for f, e in ranges) <= 1
    with pytest.raises(ValueError, match="both must be positive"):
        contiguous_ranges(0, 2)


def test_the_local_engine_keeps_the_shards_order_and_reports_progress():
    seen = []
    assert LocalEngine().map(lambda x: x * x, [3, 1, 2], lambda done, total: seen.append((done, total))) == [9, 1, 4]
    assert seen == [(1, 3), (2, 3), (3, 3)]

"""The latents writer: a failure mid-run leaves nothing half-written, and the rerun resumes to the same rows."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae.corpus.stage import build_contexts
from sae.lake import Lake
from sae.latents.stage import cache_activations, cache_latents
from sae.saes.stage import build_sae

pytestmark = pytest.mark.slow


class InjectedFailure(RuntimeError):
    pass


def fail_after(n_chunks: int):
    def hook(chunk: int) -> None:
        if chunk + 1 >= n_chunks:
            raise InjectedFailure(f"killed after chunk {chunk}")

    return hook


def read_sorted(files) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by(
        [("latent", "ascending"), ("ctx_id", "ascending"), ("pos", "ascending")]
    )


def test_failure_leaves_no_partial_partition_and_rerun_resumes_to_the_same_rows(tiny_config):
    cfg = tiny_config
    lake = Lake(cfg.lake)
    build_contexts(cfg)
    cache_activations(cfg, cfg.hookpoints, progress=False)
    for hookpoint in cfg.hookpoints:
        build_sae(cfg, hookpoint, "topk-x2", progress=False)
    partitions = [(h, "topk-x2") for h in cfg.hookpoints]

    full = cache_latents(cfg, partitions, progress=False)
    assert full.chunks_computed == 4  # 4096 tokens in chunks of 1024
    reference = {h: read_sorted(lake.files("latents", h, "topk-x2")) for h in cfg.hookpoints}
    before = {h: sorted(p.stat().st_mtime_ns for p in lake.files("latents", h, "topk-x2")) for h in cfg.hookpoints}

    # A failing rematerialization leaves the previous partitions as they were.
    with pytest.raises(InjectedFailure):
        cache_latents(cfg, partitions, progress=False, after_chunk=fail_after(2))
    for h in cfg.hookpoints:
        assert sorted(p.stat().st_mtime_ns for p in lake.files("latents", h, "topk-x2")) == before[h]

    # From an empty lake partition: nothing becomes visible until the run completes.
    for h in cfg.hookpoints:
        shutil.rmtree(lake.partition("latents", h, "topk-x2"))
    with pytest.raises(InjectedFailure):
        cache_latents(cfg, partitions, progress=False, after_chunk=fail_after(3))
    for h in cfg.hookpoints:
        assert not lake.partition("latents", h, "topk-x2").exists()
        assert len(list(lake.staging("latents", h, "topk-x2").glob("part-*.parquet"))) >= 2

    resumed = cache_latents(cfg, partitions, progress=False)
    assert resumed.chunks_skipped >= 2 and resumed.chunks_computed == 4 - resumed.chunks_skipped
    for h in cfg.hookpoints:
        assert read_sorted(lake.files("latents", h, "topk-x2")).equals(reference[h])
        assert not lake.staging("latents", h, "topk-x2").exists()

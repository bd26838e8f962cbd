"""Runs that survive crashes and readers: `saelake run` killed with SIGKILL in the middle of `latents`, then run
again while a notebook holds the lake's DuckDB file open, on a config of one layer and one SAE. The rerun
frees the dead run's pool slot, finishes every stage, and its latents equal a clean run's."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from sae.lake import Lake
from sae.lake.access import open_readonly

from ..conftest import write_config

pytestmark = pytest.mark.slow

ONE_PARTITION = {
    "layers": [{"hookpoint": "layers.2"}],
    "saes": [{"name": "topk-x2", "train": {"expansion_factor": 2, "k": 8, "epochs": 2, "batch_size": 256}}],
    "chunk_tokens": 512,  # 8 chunks: the kill lands between two of them
    "examples": {"n_top": 3, "n_train_quantile": 3, "n_test": 6, "n_random": 6, "n_neighbour": 2},
    "explain": {"n_latents": 2, "n_examples": 6, "max_tokens": 24},
    "score": {"scorers": ["detection", "embedding"], "n_activating": 3, "n_silent": 3, "batch_size": 6,
              "bootstrap": 100},
}


def saelake(config_path, *args, home, **kwargs):
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [sys.executable, "-m", "assets.cli", "--config", str(config_path), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def latents_rows(config_path) -> list[tuple]:
    lake = Lake(yaml.safe_load(config_path.read_text())["lake"])
    rows = []
    for path in lake.files("latents"):
        rows.extend(zip(*pq.read_table(path).to_pydict().values()))
    return sorted(rows)


def test_a_killed_run_resumes_past_a_reader_and_equals_a_clean_run(tmp_path, converted_model):
    home = tmp_path / "home"
    home.mkdir()
    config_path = write_config(tmp_path / "crashed", converted_model, **ONE_PARTITION)
    lake = Lake(yaml.safe_load(config_path.read_text())["lake"])
    first = saelake(config_path, "run", home=home)
    staged = lake.root / ".staging" / "latents" / "layer=layers.2" / "sae=topk-x2"
    deadline = time.monotonic() + 600
    while not any(staged.glob("part-00001.parquet")):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "latents never started"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not lake.partition("latents", "layers.2", "topk-x2").exists()  # nothing half-written is visible

    reader = open_readonly(lake.root)  # a notebook holding the lake open, a result half read
    reader.sql("SELECT * FROM activations").to_arrow_reader(64).read_next_batch()
    try:
        rerun = saelake(config_path, "run", home=home)
        out, _ = rerun.communicate(timeout=900)
    finally:
        reader.close()
    assert rerun.returncode == 0, out
    assert "released 1 run(s) whose saelake process is gone" in out
    assert "  skip  saes: 1 fresh" in out and "  build latents: 1 missing" in out
    assert "done in" in out

    clean_path = write_config(tmp_path / "clean", converted_model, **ONE_PARTITION)
    (tmp_path / "clean" / "home").mkdir()
    clean = saelake(clean_path, "run", "--select", "latents", "contexts", "activations", "saes",
                    home=tmp_path / "clean" / "home")
    clean_out, _ = clean.communicate(timeout=900)
    assert clean.returncode == 0, clean_out
    assert latents_rows(config_path) == latents_rows(clean_path)

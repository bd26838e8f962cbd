"""The tiny pipeline on an S3 lake (moto's S3 server on 127.0.0.1, sae/lake/s3.py): a `saelake run` killed in the
middle of its latents commit leaves no latents visible to DuckDB, the rerun completes from there, and `saelake
sql` reads the lake."""

import os
import subprocess
import sys

import boto3
import pyarrow.parquet as pq
import pytest

from assets.cli import main
from sae.config import BUILTIN_MODEL
from sae.lake import Lake
from sae.lake.access import open_readonly
from sae.lake.s3 import CACHE_ENV, split_url, store_for

from ..conftest import write_config

pytestmark = pytest.mark.slow

LAYER, SAE = "layers.2", "topk-x2"
STAGES = ["contexts", "activations", "saes", "latents", "latent_stats", "examples"]
ONE_PARTITION = {
    "layers": [{"hookpoint": LAYER}],
    "saes": [{"name": SAE, "train": {"expansion_factor": 2, "k": 8, "epochs": 2, "batch_size": 256}}],
    "examples": {"n_top": 3, "n_train_quantile": 3, "n_test": 6, "n_random": 6, "n_neighbour": 2},
    # Within the windows per latent (not run here): the config's checks hold without warnings.
    "explain": {"n_examples": 6}, "score": {"n_activating": 3, "n_silent": 3},
}
# `saelake run` in a process that dies (SIGKILL) once the latents are uploaded, before their Delta commit.
KILLED_AT_LATENTS_COMMIT = """
import os, signal, sys
from sae.lake import s3

commit = s3.DeltaStore.commit

def commit_or_die(self, table, *args, **kwargs):
    if table == "latents":
        os.kill(os.getpid(), signal.SIGKILL)
    return commit(self, table, *args, **kwargs)

s3.DeltaStore.commit = commit_or_die
from assets.cli import main
sys.exit(main(sys.argv[1:]))
"""


def tables(url: str) -> set[str]:
    with open_readonly(url) as con:
        return {row[0] for row in con.sql("SHOW TABLES").fetchall()}


@pytest.mark.usefixtures("clean_cli_env")
def test_the_pipeline_on_s3_survives_a_kill_mid_commit_and_saelake_sql_reads_it(
        s3_lake_url, tmp_path, converted_model, monkeypatch, capsys):
    config_path = write_config(tmp_path, converted_model, lake=s3_lake_url, **ONE_PARTITION)
    models = Lake(s3_lake_url).root / "models"  # the working copy keeps the converted model, as a local lake does
    models.mkdir(parents=True)
    (models / BUILTIN_MODEL).symlink_to(converted_model, target_is_directory=True)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    command = ["--config", str(config_path), "run", "--select", *STAGES]

    killed = subprocess.run([sys.executable, "-c", KILLED_AT_LATENTS_COMMIT, *command], capture_output=True,
                            text=True, timeout=900, env=os.environ)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    bucket, prefix = split_url(s3_lake_url)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/latents/")
            .get("Contents", [])]
    assert any(k.endswith(".parquet") for k in keys)  # uploaded, never committed
    assert {"contexts", "activations"} <= tables(s3_lake_url) and "latents" not in tables(s3_lake_url)

    assert main(command) == 0
    out = capsys.readouterr().out
    assert "  skip  saes: 1 fresh" in out and "  build latents: 1 missing" in out and "done in" in out

    assert main(["--config", str(config_path), "sql",
                 "SELECT layer, sae, count(*) AS non_zeros FROM latents GROUP BY ALL"]) == 0
    assert f"{LAYER}" in capsys.readouterr().out
    reader = Lake(s3_lake_url)
    nnz = sum(pq.read_metadata(f).num_rows for f in reader.files("latents", LAYER, SAE))
    with open_readonly(s3_lake_url) as con:
        assert con.execute("SELECT count(*) FROM latents").fetchone() == (nnz,)
        assert con.execute("SELECT sum(n_fired) FROM latent_stats").fetchone() == (nnz,)
        assert con.execute("SELECT count(DISTINCT latent) FROM examples WHERE split = 'test'").fetchone()[0] > 0
    # From another machine's (empty) working copy, `saelake status` finds every partition fresh: the provenance
    # read back from S3 matches the config.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    store_for.cache_clear()
    assert main(["--config", str(config_path), "status", "--select", *STAGES]) == 0
    assert "partitions are fresh" in capsys.readouterr().out

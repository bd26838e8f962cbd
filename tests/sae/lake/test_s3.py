"""The lake on S3 (sae/lake/s3.py) against moto's real S3 server on 127.0.0.1: commits, reads by a fresh working
copy, DuckDB, Polars and `saelake sql`, a writer killed between its upload and its Delta commit, two writers
racing, and the errors a wrong URL, a missing bucket or missing credentials give."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import boto3
import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.cli import main
from sae.lake import Lake, read_parts
from sae.lake.access import open_readonly
from sae.lake.s3 import CACHE_ENV, DeltaStore, LakeLocationError, S3Lake, split_url, store_for
from sae.lineage import Provenance

from ...conftest import free_port

LAYER = "layers.1"


def latents(n: int, seed: int) -> pa.Table:
    """Sparse rows as the latents stage writes them (float16 acts, int16 positions)."""
    rng = np.random.default_rng(seed)
    return pa.table({"latent": pa.array(np.sort(rng.integers(0, 64, n)), pa.int32()),
                     "ctx_id": pa.array(rng.integers(0, 100, n), pa.int32()),
                     "pos": pa.array(rng.integers(0, 64, n), pa.int16()),
                     "act": pa.array(rng.random(n).astype(np.float16))})


def provenance(fingerprint: str) -> Provenance:
    return Provenance(asset="latents", partition=f"{LAYER}|topk-x2", fingerprint=fingerprint, code_version="1",
                      settings={"k": 8}, inputs={})


def fresh_lake(url: str, cache, monkeypatch) -> S3Lake:
    """The same S3 lake as another machine sees it: a new store and an empty working copy."""
    monkeypatch.setenv(CACHE_ENV, str(cache))
    store_for.cache_clear()
    return Lake(url)


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.sql("SELECT sae, count(*) FROM latents GROUP BY sae").fetchall())


def bucket_keys(url: str) -> list[str]:
    bucket, prefix = split_url(url)
    client = boto3.client("s3")
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_commits_are_read_back_by_another_working_copy_by_duckdb_and_by_polars(s3_lake_url, tmp_path, monkeypatch):
    lake = Lake(s3_lake_url)
    assert isinstance(lake, S3Lake) and str(lake) == s3_lake_url
    first, other = latents(500, 0), latents(300, 1)
    lake.write_partition(first, "latents", LAYER, "topk-x2", provenance=provenance("a"))
    lake.write_partition(other, "latents", LAYER, "topk-x4", provenance=provenance("b"))
    lake.write_partition(pa.table({"ctx_id": [0, 1], "doc_id": [7, 7]}), "contexts", provenance=provenance("c"))
    # The writer's working copy holds the staged files it committed, read back without a download.
    assert lake.stored_provenance("latents", LAYER, "topk-x2").fingerprint == "a"

    reader = fresh_lake(s3_lake_url, tmp_path / "elsewhere", monkeypatch)
    assert reader.root != lake.root and not reader.root.exists()
    assert reader.stored_provenance("latents", LAYER, "topk-x4").fingerprint == "b"
    assert not reader.root.exists()  # the provenance is one small object: no partition was downloaded for it
    files = reader.files("latents", LAYER, "topk-x2")
    stored = read_parts(files)
    # Delta has no float16: the acts are stored as float32, every value exactly the same.
    assert stored.schema.field("act").type == pa.float32()
    assert stored.column("act").to_pylist() == first.column("act").cast(pa.float32()).to_pylist()
    assert stored.drop_columns(["act"]).equals(first.drop_columns(["act"]))
    assert reader.stored_provenance("contexts").fingerprint == "c"
    assert {p.name for p in reader.partition("latents", LAYER, "topk-x2").iterdir()} == {
        "part-00000.parquet", "_provenance.json", ".commit"}

    with open_readonly(s3_lake_url) as con:
        assert counts(con) == {"topk-x2": 500, "topk-x4": 300}
        assert con.sql("SELECT layer, max(act) FROM latents WHERE sae = 'topk-x4' GROUP BY layer").fetchall() == [
            (LAYER, float(other.column("act").cast(pa.float32()).to_numpy().max()))]
        assert con.execute("SELECT count(*) FROM contexts").fetchone() == (2,)
        with pytest.raises(duckdb.PermissionException):  # confined like a local lake: no other file is readable
            con.sql("SELECT * FROM read_csv('/etc/passwd')").fetchall()

    # Polars reads the Delta table itself, with the same AWS settings.
    options = {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true"}
    frame = pl.scan_delta(f"{s3_lake_url}/latents", storage_options=options).filter(pl.col("sae") == "topk-x4")
    assert frame.select(pl.len()).collect().item() == 300

    # A new commit replaces the partition whole, in one Delta commit; the other partition is untouched.
    lake.write_partition(latents(120, 2), "latents", LAYER, "topk-x2", provenance=provenance("a2"))
    with open_readonly(s3_lake_url) as con:
        assert counts(con) == {"topk-x2": 120, "topk-x4": 300}
    assert pq.read_table(reader.files("latents", LAYER, "topk-x2")).num_rows == 120
    assert reader.stored_provenance("latents", LAYER, "topk-x2").fingerprint == "a2"


KILLED_COMMIT = """
import os, signal, sys
import numpy as np, pyarrow as pa
from sae.lake import Lake, read_parts
from sae.lake import s3

def killed(*args, **kwargs):  # the process dies after its upload, before its Delta commit
    os.kill(os.getpid(), signal.SIGKILL)

s3.DeltaStore.commit = killed
table = sys.argv[2]
rows = pa.table({"latent": pa.array(np.arange(50), pa.int32()), "act": pa.array(np.ones(50, np.float16))})
Lake(sys.argv[1]).write_partition(rows, table, "layers.1", "topk-x2")
"""


def test_a_writer_killed_between_upload_and_commit_leaves_nothing_visible(s3_lake_url, tmp_path, monkeypatch):
    lake = Lake(s3_lake_url)
    lake.write_partition(latents(500, 0), "latents", LAYER, "topk-x2", provenance=provenance("a"))
    before = bucket_keys(s3_lake_url)

    for table in ("latents", "examples"):  # a partition replaced, and the first commit of a table
        killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_COMMIT), s3_lake_url, table],
                                capture_output=True, text=True, timeout=120, env=os.environ)
        assert killed.returncode == -9, killed.stderr
    uploaded = set(bucket_keys(s3_lake_url)) - set(before)
    assert any(k.endswith("part-00000.parquet") and "/latents/" in k for k in uploaded)  # it died after uploading
    assert any("/examples/" in k for k in uploaded)

    reader = fresh_lake(s3_lake_url, tmp_path / "elsewhere", monkeypatch)
    with open_readonly(s3_lake_url) as con:
        assert counts(con) == {"topk-x2": 500}  # the old partition, whole
        assert "examples" not in {r[0] for r in con.sql("SHOW TABLES").fetchall()}
    assert reader.stored_provenance("latents", LAYER, "topk-x2").fingerprint == "a"
    assert pq.read_table(reader.files("latents", LAYER, "topk-x2")).num_rows == 500
    assert reader.files("examples", LAYER, "topk-x2") == []

    # The rerun commits.
    reader.write_partition(latents(80, 3), "latents", LAYER, "topk-x2", provenance=provenance("rerun"))
    with open_readonly(s3_lake_url) as con:
        assert counts(con) == {"topk-x2": 80}
    assert Lake(s3_lake_url).stored_provenance("latents", LAYER, "topk-x2").fingerprint == "rerun"


def test_two_writers_racing_both_commit(s3_lake_url, monkeypatch):
    """The slow writer's log entry is a conditional PUT that fails where the fast one's landed: it is redone on
    top, so neither partition is lost (a store that ignored If-None-Match would drop one)."""
    fast = Lake(s3_lake_url)
    fast.write_partition(latents(10, 0), "latents", LAYER, "topk-x2")
    slow = Lake(s3_lake_url)
    slow.store = DeltaStore(s3_lake_url)  # another process: its own view of the log
    stale = slow.store.table("latents")
    assert stale.version() == 0
    read_before = [stale]  # it commits on what it read before the fast writer's commit
    monkeypatch.setattr(slow.store, "table",
                        lambda table: read_before.pop() if read_before else DeltaStore.table(slow.store, table))
    fast.write_partition(latents(20, 1), "latents", LAYER, "topk-x4")
    slow.write_partition(latents(30, 2), "latents", LAYER, "topk-x8")
    with open_readonly(s3_lake_url) as con:
        assert counts(con) == {"topk-x2": 10, "topk-x4": 20, "topk-x8": 30}


def test_two_writers_creating_a_table_both_commit(s3_lake_url, monkeypatch):
    """Both saw no table; the slow one's creation finds the fast one's, and it commits on top of it instead."""
    fast, slow = Lake(s3_lake_url), Lake(s3_lake_url)
    slow.store = DeltaStore(s3_lake_url)
    read_before = [None]  # what the slow writer read before the fast writer's commit: no table yet
    monkeypatch.setattr(slow.store, "table",
                        lambda table: read_before.pop() if read_before else DeltaStore.table(slow.store, table))
    fast.write_partition(latents(20, 1), "latents", LAYER, "topk-x4")
    slow.write_partition(latents(30, 2), "latents", LAYER, "topk-x8")
    with open_readonly(s3_lake_url) as con:
        assert counts(con) == {"topk-x4": 20, "topk-x8": 30}


@pytest.mark.usefixtures("clean_cli_env")
def test_saelake_sql_reads_an_s3_lake(s3_lake_url, capsys):
    Lake(s3_lake_url).write_partition(latents(42, 0), "latents", LAYER, "topk-x2")
    assert main(["--lake", s3_lake_url, "sql", "SELECT sae, count(*) AS n FROM latents GROUP BY sae"]) == 0
    out = capsys.readouterr().out
    assert "topk-x2" in out and "42" in out
    assert main(["--lake", s3_lake_url, "sql", "SELECT * FROM read_csv('/etc/passwd')"]) == 1
    assert "saelake sql" in capsys.readouterr().err


@pytest.mark.parametrize("url, says", [
    ("gs://bucket/lake", "must be an S3 URL"),
    ("s3:///lake", "names no valid bucket"),
])
def test_a_wrong_url_says_the_form_it_takes(url, says, s3_lake_url):
    with pytest.raises(LakeLocationError, match=says):
        Lake(url)


def test_a_missing_bucket_says_how_to_create_it(s3_lake_url):
    with pytest.raises(LakeLocationError, match="does not exist: create it") as err:
        Lake("s3://no-such-bucket/lake")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


def test_an_unreachable_endpoint_says_so_at_once(s3_lake_url, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store_for.cache_clear()
    start = time.monotonic()
    with pytest.raises(LakeLocationError, match="out of reach .*check AWS_ENDPOINT_URL"):
        Lake(s3_lake_url)
    assert time.monotonic() - start < 30


def test_missing_credentials_say_which_variables_to_set(s3_lake_url, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    store_for.cache_clear()
    with pytest.raises(LakeLocationError, match="no AWS credentials.*AWS_ACCESS_KEY_ID"):
        Lake(s3_lake_url)

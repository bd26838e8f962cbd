"""The lake on S3-compatible object storage: every table a Delta Lake table, every partition commit one Delta commit.

Why this design. S3 has no rename, so the local lake's commit (stage a folder, rename it into place) cannot
carry over. Delta Lake (through `deltalake`, delta-rs) makes a commit atomic with one conditional PUT of the next
log entry (`If-None-Match: *`, which AWS S3, MinIO, R2 and moto honour; delta-rs uses it by default since 0.23, so
neither a DynamoDB lock nor `AWS_S3_ALLOW_UNSAFE_RENAME` is needed, and two writers never overwrite each other's
commit). Readers only ever see the files the latest log entry names. DuckDB and Polars read Delta tables
without saelake, and any Delta reader (Spark, Trino, ...) can too.

The stages stay as they are: they stage a partition in a local folder and call `Lake.commit`, and they read
partitions as local files. `S3Lake` keeps a local working copy of the lake (a read-through cache) at
`$SAELAKE_CACHE/s3/<bucket>/<prefix>` (default `~/.cache/saelake`), laid out like a local lake:
- `commit` uploads the staged files under a fresh commit id, then makes them the partition with one Delta commit
  (a partition-replacing overwrite: remove the partition's old files, add the new ones). Killed before that
  commit, a run has left only objects no log entry names: invisible to every reader, and the rerun commits anew.
  The staged folder then becomes the partition's working copy, so the writer reads back nothing.
- `partition` (and so `files`) brings the working copy of a partition to the table's current version: a
  partition whose commit id is the one cached is not downloaded again.
- `stored_provenance` reads one small object, never the partition's data.

On S3, table `<t>` is `s3://<bucket>/<prefix>/<t>/`, a Delta table partitioned by `layer` and `sae` (those
the table has), and a commit's files lie in `<t>/layer=<l>/sae=<s>/<commit id>/`. Files that are not data
(`_provenance.json`, an SAE's `cfg.json` and weights) lie beside them and are found through the data files the
log names; a partition with no Parquet of its own (an SAE's weights) gets a manifest of its files as its data,
so the commit is one Delta commit there too. Delta has no float16 (nor fixed-size lists): such columns are
widened to float32 (lists) on upload, exactly (every float16 is a float32), and DuckDB reads float16 as FLOAT
anyway, so queries return the same values; ZSTD all but erases the extra bytes (3.07 against 3.06 per non-zero).
Credentials come from the standard AWS variables and profiles (delta-rs's own chain) and are never printed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import PARQUET_OPTIONS, PROVENANCE_FILE, TABLES, TEMP_SUFFIX, Lake, parse_provenance, replace_folder, seal

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from ..lineage import Provenance

SCHEME = "s3://"
CACHE_ENV = "SAELAKE_CACHE"
COMMIT_MARKER = ".commit"  # in a working copy: the commit id it holds
MANIFEST = "_files.parquet"  # the data of a partition without Parquet of its own: its files, by name and size
MANIFEST_SCHEMA = pa.schema([("name", pa.string()), ("size", pa.int64())])
PROBE_RETRIES = {"max_retries": "2", "retry_timeout": "10s"}
COMMIT_ATTEMPTS = 5  # a commit that loses a race with another writer's is redone on the new version
# Where the AWS SDKs look for credentials besides the two key variables; none set means none can be found
# without asking the instance metadata service, which is a network call outside this machine.
CREDENTIAL_SOURCES = ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                      "AWS_CONTAINER_CREDENTIALS_FULL_URI")


class LakeLocationError(ValueError):
    """The lake's URL, bucket or credentials cannot serve; the message says what to fix."""


def is_object_store_url(location) -> bool:
    return isinstance(location, str) and "://" in location


def split_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; anything else is refused with the form it must take."""
    if not url.startswith(SCHEME):
        raise LakeLocationError(f"lake {url!r}: an object-store lake must be an S3 URL, s3://BUCKET/PREFIX "
                                "(other schemes are not supported); a local lake is a folder path")
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    if not bucket or any(c in bucket for c in " \\?#"):
        raise LakeLocationError(f"lake {url!r} names no valid bucket: write it as s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def storage_options() -> dict[str, str]:
    """Options for delta-rs on top of the standard AWS environment, which it reads itself. The credentials are
    checked to exist, never read here: delta-rs takes them from the variables or the profile."""
    env = os.environ
    has_keys = env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")
    shared = [Path(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser(),
              Path(env.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser()]
    metadata_allowed = env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false"
    if not (has_keys or any(env.get(name) for name in CREDENTIAL_SOURCES) or any(p.exists() for p in shared)
            or metadata_allowed):
        raise LakeLocationError(
            "no AWS credentials for the S3 lake: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
            "AWS_ENDPOINT_URL for an S3-compatible server), or AWS_PROFILE with a profile in ~/.aws/; on a machine "
            "whose instance role should be used, set AWS_EC2_METADATA_DISABLED=false")
    options = {}
    if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or env.get("AWS_PROFILE")):
        options["AWS_REGION"] = "us-east-1"  # S3-compatible servers ignore it; without one the SDK asks the network
    if env.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"  # the endpoint the user named is plain HTTP (a local server)
    return options


def explain_storage_error(err: Exception, url: str) -> LakeLocationError:
    """A delta-rs error about the store as one line that says what to fix (the message carries no secrets)."""
    text = str(err)
    bucket = split_url(url)[0]
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return LakeLocationError(f"the bucket {bucket!r} of the lake {url} does not exist: create it (e.g. "
                                 f"`aws s3 mb s3://{bucket}`) or fix `lake:`")
    if any(code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")):
        return LakeLocationError(f"the S3 server refused the credentials for {url}: check AWS_ACCESS_KEY_ID / "
                                 "AWS_SECRET_ACCESS_KEY or the profile in AWS_PROFILE, and the bucket's policy")
    if any(code in text.lower() for code in ("connection refused", "error sending request", "dns error")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS's default endpoint")
        return LakeLocationError(f"the S3 server of the lake {url} is out of reach ({endpoint}): check "
                                 "AWS_ENDPOINT_URL and that the server runs")
    return LakeLocationError(f"the S3 lake {url} cannot be used: {text.splitlines()[0] if text else type(err)}")


def delta_type(kind: pa.DataType) -> pa.DataType:
    """The type a column is stored with in Delta, which has no float16 and no fixed-size lists."""
    if pa.types.is_float16(kind):
        return pa.float32()
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.list_(pa.field(kind.value_field.name, delta_type(kind.value_type)))
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(delta_type(f.type)) for f in kind])
    return kind


def delta_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(delta_type(f.type)) for f in schema])


class DeltaStore:
    """The lake's tables on S3 as Delta tables, and the objects beside them; one per lake URL and process."""

    def __init__(self, url: str):
        self.bucket, self.prefix = split_url(url)
        self.url = f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        self.options = storage_options()
        try:
            from deltalake.fs import DeltaStorageHandler
        except ImportError as err:
            raise LakeLocationError(f"an S3 lake needs the `deltalake` package: pip install 'saelake[s3]' ({err})"
                                    ) from err

        self.fs = pafs.PyFileSystem(DeltaStorageHandler(self.url, self.options))
        # One quick look first, with few retries: a wrong endpoint, bucket or key fails in a second, not after
        # the minutes of retries that the transfers keep for a store that is briefly unwell.
        probe = pafs.PyFileSystem(DeltaStorageHandler(self.url, {**self.options, **PROBE_RETRIES}))
        try:
            probe.get_file_info(pafs.FileSelector("", allow_not_found=True))
        except OSError as err:
            raise explain_storage_error(err, self.url) from err
        self.tables: dict[str, DeltaTable] = {}

    def table_uri(self, table: str) -> str:
        return f"{self.url}/{table}"

    def table(self, table: str) -> DeltaTable | None:
        """The Delta table at its latest version, or None where it has never been committed."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        current = self.tables.get(table)
        try:
            if current is None:
                current = self.tables[table] = DeltaTable(self.table_uri(table), storage_options=self.options)
            else:
                current.update_incremental()
        except TableNotFoundError:
            return None
        return current

    def commits(self, table: str) -> dict[tuple[str, ...], str]:
        """The commit id of every partition of `table` as it is now, keyed by its (layer, sae) values."""
        found = self.table(table)
        if found is None:
            return {}
        actions = pa.table(found.get_add_actions(flatten=True))
        columns = [name for name in actions.schema.names if name.startswith("partition.")]
        paths = actions.column("path").to_pylist()
        values = zip(*(actions.column(name).to_pylist() for name in columns)) if columns else [()] * len(paths)
        # A file's path is <partition folders>/<commit id>/<name>: one folder per partition column.
        return {tuple(key): unquote(path).split("/")[len(columns)] for key, path in zip(values, paths)}

    def commit_folder(self, table: str, partition: str, commit: str) -> str:
        return "/".join(p for p in (table, partition, commit) if p)

    def read_text(self, path: str) -> str | None:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read().decode()
        except FileNotFoundError:
            return None

    def download(self, folder: str, to: Path) -> None:
        """Every object under `folder` (a commit's files) into the local folder `to`, but the manifest."""
        for info in self.fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
            name = info.path[len(folder) + 1:]
            if info.type != pafs.FileType.File or name == MANIFEST:
                continue
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(info.path, str(to / name), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())

    def upload(self, local: Path, path: str) -> None:
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def commit(self, table: str, files: list[tuple[str, pa.Schema, int, int]], partition: dict[str, str],
               metadata: dict[str, str]) -> None:
        """One Delta commit that makes `files` ((path in the table, schema, bytes, rows)) the whole partition
        `partition` ({} for an unpartitioned table): its old files are removed in the same commit."""
        from deltalake import CommitProperties
        from deltalake import Schema as DeltaSchema
        from deltalake.exceptions import CommitFailedError, DeltaError
        from deltalake.transaction import AddAction, create_table_with_add_actions

        now = int(time.time() * 1000)
        actions = [AddAction(quote(path, safe="/="), size, partition, now, True, json.dumps({"numRecords": rows}))
                   for path, _, size, rows in files]
        columns = list(partition)
        properties = CommitProperties(custom_metadata=metadata)
        for attempt in range(COMMIT_ATTEMPTS):
            current = self.table(table)
            # Delta's schema holds the partition columns, which the files do not (as in a hive layout).
            schema = pa.unify_schemas([*(s for _, s, _, _ in files), pa.schema([(c, pa.string()) for c in columns])],
                                      promote_options="permissive")
            try:
                if current is None:
                    create_table_with_add_actions(self.table_uri(table), DeltaSchema.from_arrow(schema), actions,
                                                  mode="error", partition_by=columns, storage_options=self.options,
                                                  commit_properties=properties)
                else:
                    schema = pa.unify_schemas([pa.schema(current.schema().to_arrow()), schema],
                                              promote_options="permissive")
                    current.create_write_transaction(
                        actions, mode="overwrite", schema=DeltaSchema.from_arrow(schema), partition_by=columns,
                        partition_filters=[(k, "=", v) for k, v in partition.items()] or None,
                        commit_properties=properties)
                return
            except DeltaError as err:
                # Another writer committed first, or created the table first: redo on top of its version.
                lost_race = isinstance(err, CommitFailedError) or (current is None and self.table(table) is not None)
                if not lost_race:
                    raise
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise RuntimeError(f"could not commit {table} {partition} after {COMMIT_ATTEMPTS} tries: "
                                       f"{err}") from err
                self.tables.pop(table, None)


@cache
def store_for(url: str) -> DeltaStore:
    return DeltaStore(url)


class S3Lake(Lake):
    """A lake whose tables live on S3 as Delta tables, read and written through a local working copy."""

    def __init__(self, url: str):
        self.store = store_for(url.rstrip("/"))
        self.url = self.store.url
        cache_root = Path(os.environ.get(CACHE_ENV) or "~/.cache/saelake").expanduser()
        self.root = (cache_root / "s3" / self.store.bucket / self.store.prefix).resolve()

    def __str__(self) -> str:
        return self.url

    def partition(self, table: str, layer: str | None = None, sae: str | None = None) -> Path:
        """The local working copy of the partition (every partition under it, for a table or a layer), brought
        to the table's current version."""
        wanted = tuple(v for v in (layer, sae) if v is not None)
        for key, commit in self.store.commits(table).items():
            if key[:len(wanted)] == wanted:
                self._sync(table, key, commit)
        return self.location(table, layer, sae)

    def _sync(self, table: str, key: tuple[str, ...], commit: str) -> None:
        local = self.location(table, *key)
        marker = local / COMMIT_MARKER
        if marker.exists() and marker.read_text() == commit:
            return
        download = self.root / ".downloads" / uuid.uuid4().hex
        download.mkdir(parents=True)
        self.store.download(self.store.commit_folder(table, self._partition_path(table, key), commit), download)
        (download / COMMIT_MARKER).write_text(commit)
        replace_folder(download, local, self.root / ".trash" / uuid.uuid4().hex)

    def _partition_path(self, table: str, key: tuple[str, ...]) -> str:
        return self.location(table, *key).relative_to(self.root / table).as_posix() if key else ""

    def stored_provenance(self, table: str, layer: str | None = None, sae: str | None = None) -> Provenance | None:
        """What made the partition as it is now: from the working copy if it holds that commit, else the one
        object beside the commit's files (never the partition's data)."""
        key = tuple(v for v in (layer, sae) if v is not None)
        commit = self.store.commits(table).get(key)
        if commit is None:
            return None
        local = self.location(table, layer, sae)
        marker = local / COMMIT_MARKER
        if marker.exists() and marker.read_text() == commit:
            path = local / PROVENANCE_FILE
            return parse_provenance(path.read_text() if path.exists() else None)
        folder = self.store.commit_folder(table, self._partition_path(table, key), commit)
        return parse_provenance(self.store.read_text(f"{folder}/{PROVENANCE_FILE}"))

    def commit(self, staging: Path, table: str, layer: str | None = None, sae: str | None = None,
               provenance: Provenance | None = None) -> Path:
        """Upload the staged partition under a new commit id, then make it the partition in one Delta commit;
        the staged folder becomes the working copy. Nothing is visible to any reader before that commit."""
        seal(staging, provenance)
        key = tuple(v for v in (layer, sae) if v is not None)
        partition = dict(zip(("layer", "sae"), key))
        commit = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        folder = self.store.commit_folder(table, self._partition_path(table, key), commit)
        relative = folder[len(table) + 1:]
        parts = sorted(staging.rglob("*.parquet")) if table in TABLES else []
        data = [(f"{relative}/{p.relative_to(staging).as_posix()}",) + widen_for_delta(p) for p in parts]
        if not data and table in TABLES:
            raise ValueError(f"nothing to commit: the staged {table} partition {staging} holds no Parquet file")
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            self.store.upload(path, f"{folder}/{path.relative_to(staging).as_posix()}")
        if not data:  # a partition of files (an SAE's weights): its manifest is the data the Delta commit adds
            data = [self._write_manifest(staging, f"{folder}/{MANIFEST}", f"{relative}/{MANIFEST}")]
        self.store.commit(table, data, partition, {"saelake.partition": f"{table}/{relative}"})
        (staging / COMMIT_MARKER).write_text(commit)
        final = self.location(table, layer, sae)
        replace_folder(staging, final, self.root / ".trash" / uuid.uuid4().hex)
        return final

    def _write_manifest(self, staging: Path, path: str, relative: str) -> tuple[str, pa.Schema, int, int]:
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest = pa.table({"name": [p.relative_to(staging).as_posix() for p in files],
                             "size": [p.stat().st_size for p in files]}, schema=MANIFEST_SCHEMA)
        with self.store.fs.open_output_stream(path) as out:
            pq.write_table(manifest, out, **PARQUET_OPTIONS)
        return relative, MANIFEST_SCHEMA, self.store.fs.get_file_info(path).size, manifest.num_rows

    def write_views(self) -> Path:
        """`views.sql` in the working copy, over the Delta tables on S3, for DuckDB clients that can load the
        `delta` and `httpfs` extensions (saelake itself never needs them)."""
        lines = ["-- Views over the lake's Delta tables on S3, for DuckDB with the delta extension:",
                 "--   INSTALL delta; LOAD delta; CREATE SECRET (TYPE s3, PROVIDER credential_chain);",
                 "-- then run this script. Rewritten by saelake after every write."]
        for table in TABLES:
            if self.store.table(table) is not None:
                lines.append(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM "
                             f"delta_scan('{self.store.table_uri(table)}');")
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / "views.sql"
        tmp = target.with_name(f".views.sql.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, target)
        return target


def widen_for_delta(path: Path) -> tuple[pa.Schema, int, int]:
    """(schema, bytes, rows) of a staged part as Delta will hold it: rewritten in place, row groups kept, where
    a column has a type Delta lacks."""
    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    wanted = delta_schema(schema)
    if not wanted.equals(schema, check_metadata=False):
        groups = meta.row_group(0).num_rows if meta.num_row_groups else None
        table = pq.read_table(path).cast(wanted)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        pq.write_table(table, tmp, row_group_size=groups, **PARQUET_OPTIONS)
        os.replace(tmp, path)
    return wanted.remove_metadata(), path.stat().st_size, meta.num_rows


def open_readonly(url: str, allow: Sequence[Path] = ()) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per Delta table of the S3 lake (Arrow datasets, which DuckDB
    scans with projection and filter pushdown), confined like a local lake's: no file but `allow` is readable."""
    from .access import confine

    store = store_for(url.rstrip("/"))
    tables = {table: found for table in TABLES if (found := store.table(table)) is not None}
    if not tables:
        raise FileNotFoundError(f"no tables in the lake at {store.url}; run `saelake run` first (or pass --lake)")
    con = duckdb.connect()
    for table, found in tables.items():
        con.register(table, found.to_pyarrow_dataset())
    confine(con, [Path(p).resolve() for p in allow], search_path=None)
    return con


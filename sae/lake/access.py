"""Reading the lake from outside the pipeline: a confined read-only connection, and views for any DuckDB client.

`open_readonly` is an in-memory DuckDB connection (so it never takes the lock of the lake's database file)
whose views point at the lake's Parquet files, which may read files under the lake root (and the paths the
caller allows) and nothing else; its configuration is locked, so the user's SQL cannot widen that.
`views_sql` writes the same views with paths relative to the lake root: `cd lake && duckdb -init views.sql`
works from any DuckDB client and version, and a copied lake reads its own files.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import duckdb

from . import TABLES, UNPARTITIONED

VIEWS_SCRIPT = "views.sql"
# What `read_only_statements` lets through: queries only. COPY, ATTACH, EXPORT, CREATE, SET, ... are refused.
READ_STATEMENTS = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)


class LakeAccessError(ValueError):
    """A query asked for something a read-only lake connection does not allow; the message says what."""


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def views_sql(lake_root: Path, absolute: bool = False) -> str:
    """One `CREATE OR REPLACE VIEW` per table of the lake that has files, over paths relative to the lake root
    (resolved by the reader's working directory or `file_search_path`); `absolute` writes the current root in."""
    root = Path(lake_root).resolve()
    statements = []
    for table in TABLES:
        partitioned = table not in UNPARTITIONED
        pattern = f"{table}/**/*.parquet" if partitioned else f"{table}/*.parquet"
        if not any(root.glob(pattern)):
            continue
        path = f"{root}/{pattern}" if absolute else pattern
        statements.append(
            f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet({_quote(path)}, "
            f"hive_partitioning = {str(partitioned).lower()}, union_by_name = true);"
        )
    return "\n".join(statements) + "\n"


def write_views_script(lake_root: Path) -> Path:
    """Write `<lake>/views.sql` atomically (a reader never sees half a script)."""
    root = Path(lake_root).resolve()
    target = root / VIEWS_SCRIPT
    tmp = target.with_name(f".{VIEWS_SCRIPT}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(
        "-- Views over the lake's Parquet files, relative to this folder: cd into it, then `duckdb -init views.sql`\n"
        "-- (or SET file_search_path to this folder first). Rewritten by saelake after every write.\n"
        + views_sql(root)
    )
    os.replace(tmp, target)
    return target


def open_readonly(lake_root: Path | str, allow: Sequence[Path] = ()) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the lake's views, confined to reading files under the lake root and `allow`.

    DuckDB checks a relative path before `file_search_path` resolves it, so the views are created over the
    current root's absolute paths here, in memory: nothing stale is stored. Writes are refused by
    `read_only_statements`, which every caller runs on the user's SQL first (the lake itself must stay
    readable, and DuckDB's allowed directories admit writing as well as reading). An S3 URL opens the lake's
    Delta tables instead (sae/lake/s3.py).
    """
    from .s3 import is_object_store_url

    if is_object_store_url(lake_root):
        from .s3 import open_readonly as open_object_store

        return open_object_store(str(lake_root), allow)
    root = Path(lake_root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no lake at {root}; run `saelake run` first (or pass --lake PATH)")
    con = duckdb.connect()
    try:
        con.execute(views_sql(root, absolute=True))
    except duckdb.Error as err:  # a view reads every file's schema: one damaged part stops them all
        con.close()
        raise LakeAccessError(f"the lake's views cannot be built: {err}. `saelake check` names every damaged "
                              "part; delete it and rebuild its partition with `saelake run`") from err
    confine(con, [root, *(Path(p).resolve() for p in allow)], search_path=root)
    return con


def confine(con: duckdb.DuckDBPyConnection, allowed: Sequence[Path], search_path: Path | None) -> None:
    """Let `con` read the files and folders `allowed` and nothing else, then lock its configuration."""
    missing = [str(p) for p in allowed if not p.exists()]
    if missing:
        con.close()
        raise FileNotFoundError(f"allowed path(s) do not exist: {', '.join(missing)}")
    folders = [f"{p}/" for p in allowed if p.is_dir()]
    paths = [str(p) for p in allowed if not p.is_dir()]
    if folders:
        con.execute(f"SET allowed_directories = [{', '.join(map(_quote, folders))}]")
    if paths:
        con.execute(f"SET allowed_paths = [{', '.join(map(_quote, paths))}]")
    if search_path is not None:
        con.execute(f"SET file_search_path = {_quote(str(search_path))}")
    # Parquet footers read once per file, not once per query (a long-lived reader such as the browser asks the
    # same files again and again); DuckDB checks each file's modification time, so a rewritten file is reread.
    con.execute("SET parquet_metadata_cache = true")
    # No file outside the allowed ones, no extension installs or loads; then nothing may be changed back.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def read_only_statements(query: str) -> list[duckdb.Statement]:
    """The statements of `query`, refusing any that is not a query (a SELECT or an EXPLAIN)."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        raise LakeAccessError(f"could not parse the query: {err}") from err
    for statement in statements:
        if statement.type not in READ_STATEMENTS:
            kind = statement.type.name
            raise LakeAccessError(
                f"{kind} statements are not allowed: the lake is read-only here, only SELECT (and EXPLAIN) "
                "queries run. To write query results somewhere, run DuckDB yourself: "
                "cd <lake> && duckdb -init views.sql"
            )
    if not statements:
        raise LakeAccessError("the query is empty")
    return statements

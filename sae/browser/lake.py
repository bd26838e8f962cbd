"""The browser's window on the lake: a confined read-only connection, reopened when the lake's tables change.

Every query is a file in sql/ run with bound parameters (sae/lake/sql.py); nothing from a request is ever part
of the SQL text. Tables that are not built yet have no view: a page asks `has(...)` and says so. The two tables
the latent list joins (explanations, scores) get empty stand-ins instead, so one query serves a lake with or
without them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa

from ..explanations.explainer import SCHEMA as EXPLANATIONS_SCHEMA
from ..lake import TABLES, UNPARTITIONED
from ..lake.access import VIEWS_SCRIPT, open_readonly
from ..lake.sql import run_query
from ..scoring.scorers import SCHEMA as SCORES_SCHEMA

HIVE = [pa.field("layer", pa.string()), pa.field("sae", pa.string())]
STAND_INS = {"explanations": EXPLANATIONS_SCHEMA, "scores": SCORES_SCHEMA}


def lake_signature(root: Path) -> tuple:
    """What changes whenever a partition is committed or a views script rewritten (a commit renames a folder
    into its table's or layer's folder, changing that folder's mtime): a few dozen stat calls per request."""
    paths = [root / VIEWS_SCRIPT]
    for table in TABLES:
        folder = root / table
        paths.append(folder)
        if table not in UNPARTITIONED and folder.is_dir():
            paths.extend(sorted(folder.glob("layer=*")))
    signature = []
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        signature.append((str(path), stat.st_mtime_ns, stat.st_ino))
    return tuple(signature)


class BrowserLake:
    """One in-memory DuckDB over the lake, shared by every request through cursors, and caches of what is
    costly to load (decoders, embeddings, context tokens), all dropped when the lake changes."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self.tables: frozenset[str] = frozenset()
        self._cache: dict = {}

    def refresh(self) -> None:
        """Reopen the views if the lake changed since the last look (once per request: see create_app)."""
        signature = lake_signature(self.root)
        with self._lock:
            if self._con is None or signature != self._signature:
                self._open(signature)

    def connection(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None:
                self._open(lake_signature(self.root))
            return self._con

    def _open(self, signature: tuple) -> None:
        con = open_readonly(self.root)
        tables = frozenset(row[0] for row in run_query(con, "browser_tables").fetchall())
        for name, schema in STAND_INS.items():
            if name not in tables:
                empty = pa.Table.from_pylist([], schema=pa.schema([*schema, *HIVE]))
                con.register("stand_in", empty)
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM stand_in")  # a constant name, not input
                con.unregister("stand_in")
        if self._con is not None:
            self._con.close()
        self._con, self.tables, self._signature, self._cache = con, tables, signature, {}

    def has(self, *tables: str) -> bool:
        self.connection()
        return all(t in self.tables for t in tables)

    def missing(self, *tables: str) -> list[str]:
        self.connection()
        return [t for t in tables if t not in self.tables]

    def rows(self, query: str, **params) -> list[dict]:
        """The rows of sql/<query>.sql as dicts. A partition replaced under a running query (its old files
        gone) is read again once over new views."""
        for attempt in (0, 1):
            cursor = self.connection().cursor()
            try:
                relation = run_query(cursor, query, **params)
                columns = relation.columns
                return [dict(zip(columns, row)) for row in relation.fetchall()]
            except duckdb.IOException:
                if attempt:
                    raise
                with self._lock:
                    self._open(lake_signature(self.root))
            finally:
                cursor.close()
        raise AssertionError("unreachable")

    def cached(self, key, load: Callable):
        """`load()` once per state of the lake."""
        self.connection()
        with self._lock:
            cache = self._cache
        if key not in cache:
            cache[key] = load()
        return cache[key]

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

"""Runs the queries in sql/: one file per query, parameterised with DuckDB's `$name` placeholders."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import duckdb

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


@cache
def query_text(name: str) -> str:
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"no query {name!r}: {path} does not exist")
    return path.read_text()


def run_query(con: duckdb.DuckDBPyConnection, name: str, **params) -> duckdb.DuckDBPyRelation:
    return con.sql(query_text(name), params=params)

"""Runs the queries in sql/: one file per query, parameterised with DuckDB's `$name` placeholders.

The queries ship as package data `sae.queries` (sae/queries links to the repo's sql/), read through
importlib.resources, so an installed saelake needs no source tree.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import duckdb

QUERIES = files("sae.queries")


@cache
def query_text(name: str) -> str:
    path = QUERIES / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no query {name!r}: {path} does not exist")
    return path.read_text()


def run_query(con: duckdb.DuckDBPyConnection, name: str, **params) -> duckdb.DuckDBPyRelation:
    return con.sql(query_text(name), params=params)

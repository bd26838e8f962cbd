"""Runs the queries in sql/: one file per query, parameterised with DuckDB's `$name` placeholders.

The queries ship as package data `sae.queries` (sae/queries links to the repo's sql/), read through
importlib.resources, so an installed saelake needs no source tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

QUERIES = files("sae.queries")


@cache
def query_text(name: str) -> str:
    path = QUERIES / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no query {name!r}: {path} does not exist")
    return path.read_text()


def run_query(con: duckdb.DuckDBPyConnection, name: str, **params) -> duckdb.DuckDBPyRelation:
    return con.sql(query_text(name), params=params)


def query_over(name: str, source: pa.Table | pl.DataFrame | Sequence[Path | str], view: str,
               **params) -> pl.DataFrame:
    """Runs query `name` over one table named `view` in its SQL: an Arrow table or Polars frame in memory, or
    Parquet files (read with `union_by_name`, so parts written by different versions still line up)."""
    with duckdb.connect() as con:
        if isinstance(source, (pa.Table, pl.DataFrame)):
            con.register(view, source)
        else:
            files = [str(f) for f in source]
            if not files:
                raise ValueError(f"no Parquet files given for `{view}`: pass the partition's files or its table")
            con.read_parquet(files, union_by_name=True).create_view(view)
        return run_query(con, name, **params).pl()

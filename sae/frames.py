"""Polars frames for shaping tables in memory; Arrow stays at the boundaries (Parquet, `datasets`).

Polars hands Arrow back with large (or view) strings and 64-bit lists; the lake's schemas use plain ones, so a
frame leaves through `to_arrow` with the table's schema.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa


def frame(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """A Polars frame over an Arrow table (zero-copy where the types allow); a frame is returned as is."""
    return table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)


def to_arrow(data: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """The frame as an Arrow table of `schema`: its columns in the schema's order, cast to the schema's types."""
    return data.select(schema.names).to_arrow().cast(schema)

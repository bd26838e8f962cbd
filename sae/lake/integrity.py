"""Finding Parquet files of the lake that cannot be read, from their footers alone (no data pages read)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_TRAILER = 8  # bytes after the footer: its length (4) and the magic "PAR1" (4)


def unreadable_parquet(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """The files among `paths` whose footer does not open, whose row-group statistics do not decode, or whose
    column chunks reach past the start of the footer (a file cut short or spliced), each with the reason."""
    bad = []
    for path in map(Path, paths):
        reason = _footer_problem(path)
        if reason is not None:
            bad.append((path, reason))
    return bad


def _footer_problem(path: Path) -> str | None:
    try:
        meta = pq.ParquetFile(path).metadata
        footer_start = path.stat().st_size - meta.serialized_size - _TRAILER
        for group in range(meta.num_row_groups):
            row_group = meta.row_group(group)
            for column in range(row_group.num_columns):
                chunk = row_group.column(column)
                _ = chunk.statistics  # decodes the chunk's statistics, still from the footer
                start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
                if start + chunk.total_compressed_size > footer_start:
                    return (f"row group {group}, column {chunk.path_in_schema!r} ends at byte "
                            f"{start + chunk.total_compressed_size}, past the footer at byte {footer_start}")
    except (pa.ArrowException, OSError) as err:
        return str(err)
    return None

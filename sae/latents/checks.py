"""Data checks of a committed latents partition: its size on disk per non-zero, and that every part reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..checks import ERROR, WARN, CheckOutcome


def bytes_per_non_zero(partition_folder: Path, n_non_zero: int, target: float = 5.0) -> CheckOutcome:
    """WARN when the partition's Parquet files take more than `target` bytes per non-zero activation."""
    files = sorted(Path(partition_folder).glob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    meta = {"bytes": size, "files": len(files), "n_non_zero": n_non_zero, "target": target}
    if n_non_zero <= 0:
        return CheckOutcome("bytes_per_non_zero", True, WARN,
                            f"{partition_folder} holds no non-zero activations: nothing to measure", meta)
    per = size / n_non_zero
    meta["bytes_per_non_zero"] = round(per, 3)
    if per <= target:
        return CheckOutcome("bytes_per_non_zero", True, WARN,
                            f"{per:.2f} bytes per non-zero activation on disk (target {target:g})", meta)
    return CheckOutcome(
        "bytes_per_non_zero", False, WARN,
        f"{per:.2f} bytes per non-zero activation on disk, over the target of {target:g} ({size:,} bytes for "
        f"{n_non_zero:,} non-zeros in {len(files)} files): check the rows are sorted by latent, ZSTD-compressed, "
        "with int16 positions and float16 values", meta)


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be read as Parquet, or None when it can.

    Footer and row-group statistics alone miss a damaged data page, so every row group is also decoded: for
    the demo's ~5 MB partitions that takes tens of milliseconds, and it is what every query would do anyway.
    """
    try:
        part = pq.ParquetFile(path)
        meta = part.metadata
        size = path.stat().st_size
        rows = 0
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            for j in range(group.num_columns):
                column = group.column(j)
                column.statistics  # noqa: B018 -- decodes the chunk's min / max, which raises if they are damaged
                start = min(o for o in (column.dictionary_page_offset, column.data_page_offset) if o is not None)
                end = start + column.total_compressed_size
                if end > size:
                    return (f"row group {i}, column {column.path_in_schema} ends at byte {end:,}, past the file's "
                            f"{size:,} bytes")
            rows += part.read_row_group(i).num_rows
        if rows != meta.num_rows:
            return f"the footer counts {meta.num_rows:,} rows, the row groups hold {rows:,}"
    except (pa.ArrowException, OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def readable_parts(files: list[Path]) -> CheckOutcome:
    """ERROR naming every Parquet file whose footer, column-chunk statistics or row groups cannot be read.

    One such file makes every DuckDB query over the partition fail, so the check says which one to rewrite."""
    broken = {str(f): reason for f in files if (reason := _unreadable(Path(f))) is not None}
    meta = {"files": len(files), "unreadable": broken}
    if not broken:
        return CheckOutcome("readable_parts", True, ERROR, f"all {len(files)} Parquet files read", meta)
    listing = "; ".join(f"{path} ({reason})" for path, reason in broken.items())
    return CheckOutcome("readable_parts", False, ERROR,
                        f"{len(broken)} of {len(files)} Parquet files cannot be read: {listing}. Delete the "
                        "partition (or just these files) and materialize `latents` for it again", meta)

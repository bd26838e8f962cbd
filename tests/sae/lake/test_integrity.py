"""Unreadable Parquet parts of the lake are found from their footers."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from sae.lake.integrity import unreadable_parquet


def _part(path, rows: int = 20_000):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"latent": pa.array(range(rows), pa.int32()), "act": [0.5] * rows}), path,
                   row_group_size=rows // 4, compression="zstd")
    return path


def test_a_good_file_is_not_listed(tmp_path):
    assert unreadable_parquet([_part(tmp_path / "latents" / "part-00000.parquet")]) == []


def test_truncated_spliced_garbage_and_missing_files_are_listed_with_the_reason(tmp_path):
    good = _part(tmp_path / "good.parquet")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    # The footer is intact but a run of bytes is gone: the column chunks now reach into the footer.
    spliced = tmp_path / "spliced.parquet"
    spliced.write_bytes(data[:1000] + data[5000:])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all" * 10)
    missing = tmp_path / "missing.parquet"
    found = dict(unreadable_parquet([good, truncated, spliced, garbage, missing]))
    assert list(found) == [truncated, spliced, garbage, missing]
    assert "magic bytes" in found[truncated] and "magic bytes" in found[garbage]
    assert "past the footer" in found[spliced] and "'latent'" in found[spliced]
    assert "No such file" in found[missing]

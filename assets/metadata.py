"""Small helpers that turn library results into Dagster metadata."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def markdown_table(rows: list[dict]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("(no rows)")
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def with_latent_links(rows: list[dict], browser_url: str) -> list[dict]:
    """Preview rows whose `latent` links to its page in the latent browser (`saelake serve`) at `browser_url`."""
    from urllib.parse import quote

    base = browser_url.rstrip("/")
    return [{**row, "latent": f"[{row['latent']}]({base}/latent/{quote(row['layer'])}/{quote(row['sae'])}/"
                              f"{row['latent']})"} for row in rows]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def publish_views(lake) -> None:
    """Rewrite the lake's views script for users after an asset wrote its tables."""
    lake.write_views()


def shard_logger(context: dg.AssetExecutionContext, asset: str, key: tuple[str, str], done_word: str, engine: str):
    """A progress callback for a sharded stage: logs each finished shard of partition `key`, e.g. "examples
    layers.1|planted: 2 of 3 shards selected (ray engine)"."""
    def progress(done: int, total: int) -> None:
        context.log.info(f"{asset} {'|'.join(key)}: {done} of {total} shards {done_word} ({engine} engine)")

    return progress

"""Data checks: what each stage's own `checks.py` returns about a committed partition.

An `error` outcome means the data is wrong: it blocks everything downstream. A `warn` outcome is
reported (Dagster UI, `saelake run`, the lake's `checks` table) and blocks nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .lake import Lake

ERROR = "error"
WARN = "warn"


@dataclass(frozen=True)
class CheckSpec:
    """A stage's check as the UI lists it before it runs: an error-severity check blocks what is downstream."""

    name: str
    severity: str
    about: str


@dataclass(frozen=True)
class CheckOutcome:
    name: str  # e.g. "train_test_disjoint": one name per check, the same for every partition
    passed: bool
    severity: str  # ERROR or WARN: what a failure means
    description: str  # one sentence a researcher can act on, with the figures
    metadata: dict = field(default_factory=dict)  # numbers (and short lists) behind the verdict

    def __post_init__(self):
        if self.severity not in (ERROR, WARN):
            raise ValueError(f"check severity must be {ERROR!r} or {WARN!r}, got {self.severity!r}")


CHECKS_TABLE = "checks"
CHECKS_SCHEMA = pa.schema([
    ("layer", pa.string()), ("sae", pa.string()), ("check_name", pa.string()), ("passed", pa.bool_()),
    ("severity", pa.string()), ("description", pa.string()),
    ("metadata", pa.string()),  # JSON
    ("fingerprint", pa.string()),  # of the partition checked: a rebuilt partition's old outcomes no longer apply
    ("checked_at", pa.timestamp("us", tz="UTC")),
])


def _checks_file(lake: Lake, asset: str, key) -> Path:
    from .lineage import partition_label

    name = "all" if key is None else partition_label(key).replace("|", "--")
    return lake.root / CHECKS_TABLE / f"asset={asset}" / f"part-{name}.parquet"


def record(lake: Lake, asset: str, key, fingerprint: str, outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    """Store a partition's check outcomes in the lake's `checks` table (one file per partition, replaced)."""
    from .lake import write_parquet
    from .lineage import split_key

    layer, sae = split_key(key)
    now = datetime.now(timezone.utc)
    table = pa.Table.from_pydict({
        "layer": [layer] * len(outcomes), "sae": [sae] * len(outcomes), "check_name": [o.name for o in outcomes],
        "passed": [o.passed for o in outcomes], "severity": [o.severity for o in outcomes],
        "description": [o.description for o in outcomes],
        "metadata": [json.dumps(o.metadata, default=str) for o in outcomes],
        "fingerprint": [fingerprint] * len(outcomes), "checked_at": [now] * len(outcomes)}, schema=CHECKS_SCHEMA)
    path = _checks_file(lake, asset, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(table, path)
    return outcomes


def record_checks(cfg: PipelineConfig, asset: str, key, outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    """`record` for the partition as the config makes it (its fingerprint from the lineage)."""
    from .lake import lake_for
    from .lineage import lineage_of

    return record(lake_for(cfg), asset, key, lineage_of(cfg).fingerprint(asset, key), outcomes)


def failed_blocking_checks(lake: Lake, asset: str, key, fingerprint: str) -> list[str]:
    """The error-severity checks that failed on the partition as it is now (its fingerprint), as text."""
    path = _checks_file(lake, asset, key)
    if not path.exists():
        return []
    rows = pq.read_table(path, columns=["check_name", "passed", "severity", "description", "fingerprint"]).to_pylist()
    return [f"{r['check_name']} ({r['description']})" for r in rows
            if r["fingerprint"] == fingerprint and r["severity"] == ERROR and not r["passed"]]

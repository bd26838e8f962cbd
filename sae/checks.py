"""Data checks: what each stage's own `checks.py` returns about a committed partition.

An `error` outcome means the data is wrong: it blocks everything downstream. A `warn` outcome is
reported (Dagster UI, `saelake run`, the lake's `checks` table) and blocks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ERROR = "error"
WARN = "warn"


@dataclass(frozen=True)
class CheckOutcome:
    name: str  # e.g. "test_train_disjoint": one name per check, the same for every partition
    passed: bool
    severity: str  # ERROR or WARN: what a failure means
    description: str  # one sentence a researcher can act on, with the figures
    metadata: dict = field(default_factory=dict)  # numbers (and short lists) behind the verdict

    def __post_init__(self):
        if self.severity not in (ERROR, WARN):
            raise ValueError(f"check severity must be {ERROR!r} or {WARN!r}, got {self.severity!r}")

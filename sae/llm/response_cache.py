"""A response cache in the lake: the same (backend, model, messages, sampling) is answered from disk.

Rows live in `lake/llm_cache/part-*.parquet`, one file per batch of new completions (written atomically),
so a rerun of the same prompts costs no model call and gives the same text, and a crash loses nothing
that was already written. `saelake sql` can read the cache like any table.

Shards on other processes (Ray workers) write their answers here themselves, batch by batch, as the driver does:
every file has a name of its own and appears whole (a temp name, then a rename), so writers side by side never
touch each other's files and a reader never sees half of one; and an answer is kept as soon as its batch is done,
so a shard killed midway loses none it had (its rerun answers them from here). Having shards hand their answers
back for the driver to write would lose exactly those.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa

from ..lake import write_parquet
from .base import ChatRequest, ChoiceLogprobs, ChoiceText, Completion, LLMClient, ScoredText, request_key

SCHEMA = pa.schema([("key", pa.string()), ("backend", pa.string()), ("model", pa.string()),
                    ("request", pa.string()), ("completion", pa.string()),
                    ("created_at", pa.timestamp("us", tz="UTC"))])


class CachedClient(LLMClient):
    """Wraps a backend: requests already in the cache are not sent; new completions are appended."""

    def __init__(self, inner: LLMClient, folder: Path):
        self.inner = inner
        self.backend, self.model, self.supports_logprobs = inner.backend, inner.model, inner.supports_logprobs
        self.folder = Path(folder)
        self.sent = 0  # requests that reached the backend (the rest came from the cache)
        self._entries: dict[str, str] = {}
        self._read: set[str] = set()  # the part files loaded so far
        self.refresh()

    def _identity(self) -> str:
        return f"{self.backend}:{self.model}"

    def refresh(self) -> None:
        """Load the part files written since the last load (by other processes: the shards of other workers, a
        later run), so a client kept across shards answers from them too."""
        files = [f for f in sorted(self.folder.glob("part-*.parquet")) if f.name not in self._read]
        if not files:
            return
        # Files in name order (their time stamps), so a key written twice keeps its latest completion.
        table = pl.read_parquet(files, columns=["key", "completion"])
        self._entries.update(zip(table["key"].to_list(), table["completion"].to_list()))
        self._read.update(f.name for f in files)

    def complete(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[Completion]:
        keys = [request_key(self._identity(), r) for r in requests]
        results: list[Completion | None] = [None] * len(requests)
        missing: dict[str, int] = {}  # one call per distinct prompt, even if a batch repeats it
        for i, key in enumerate(keys):
            if key in self._entries:
                results[i] = Completion.from_json(self._entries[key])
                results[i].cached = True
            else:
                missing.setdefault(key, i)
        if missing:
            fresh = self.inner.complete([requests[i] for i in missing.values()], progress=progress)
            self.sent += len(missing)
            self._append(list(missing), [requests[i] for i in missing.values()], fresh)
            by_key = dict(zip(missing, fresh))
            for i, key in enumerate(keys):
                if results[i] is None:
                    results[i] = by_key[key]
        return results

    def _append(self, keys: list[str], requests: list[ChatRequest], completions: list[Completion]) -> None:
        now = datetime.now(timezone.utc)
        texts = [c.to_json() for c in completions]
        table = pa.table({
            "key": keys, "backend": [self.backend] * len(keys), "model": [self.model] * len(keys),
            "request": [json.dumps({"messages": r.messages, "sampling": r.sampling.as_dict()}) for r in requests],
            "completion": texts, "created_at": [now] * len(keys),
        }, schema=SCHEMA)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{now:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
        write_parquet(table, path)
        self._entries.update(zip(keys, texts))
        self._read.add(path.name)

    def prompt_logprobs(self, requests: Sequence[ScoredText], progress: bool = False) -> list[list[float]]:
        # Not cached: a forward pass costs about what reading a cached row would, and its floats are large.
        return self.inner.prompt_logprobs(requests, progress=progress)

    def choice_logprobs(self, requests: Sequence[ChoiceText], progress: bool = False) -> list[ChoiceLogprobs]:
        return self.inner.choice_logprobs(requests, progress=progress)  # one forward pass each, as above

    @property
    def prompt_logprobs_model(self) -> str:
        return self.inner.prompt_logprobs_model

    def close(self) -> None:
        self.inner.close()


def requests_sent(client: LLMClient | None) -> int:
    """The requests `client` has passed to its backend so far, as the response cache counts them (0 for a bare
    backend, which counts none, and for no client)."""
    return client.sent if isinstance(client, CachedClient) else 0

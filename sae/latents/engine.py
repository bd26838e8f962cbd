"""The caching engine: one forward pass over the contexts feeds every sink (dense activations, SAE latents).

The contexts are cut into chunks of `chunk_contexts`; each sink writes one Parquet file per chunk into
its partition's staging folder. Memory is bounded by one chunk per sink plus the writer queue, whatever
`n_tokens` is. A chunk file is written atomically, so after a crash the rerun skips the chunks already
on disk (when the staging fingerprint matches) and recomputes the rest with the same batches, giving the
same rows. Compression and writing run in a background thread while the model computes the next batch.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..corpus.documents import ContextTokens
from ..lake import Lake, write_parquet
from ..lineage import Provenance
from ..saes.codecs import Sae
from .hookpoints import capture

log = logging.getLogger(__name__)

LATENTS_SCHEMA = pa.schema(
    [("latent", pa.int32()), ("ctx_id", pa.int32()), ("pos", pa.int16()), ("act", pa.float16())]
)
MAX_PENDING_WRITES = 1  # chunks queued per sink for the writer thread while the next is computed; bounds memory


def to_float16(values: Tensor) -> np.ndarray:
    """float16 for storage, saturating at its largest finite value instead of overflowing to inf."""
    limit = torch.finfo(torch.float16).max
    return values.clamp(-limit, limit).to(torch.float16).cpu().numpy()


class Sink:
    """Receives a hookpoint's activations batch by batch and writes one file per chunk."""

    table: str

    def __init__(self, lake: Lake, hookpoint: str, provenance: Provenance | None, sae_name: str | None = None,
                 reads: str | None = None):
        self.lake = lake
        self.hookpoint = hookpoint
        self.reads = reads or hookpoint  # the activations it is fed (the MLP input for a transcoder, ...)
        self.sae_name = sae_name
        self.provenance = provenance
        # Chunks already staged with the same settings are kept: a rerun after a crash resumes from them.
        self.staging = lake.open_staging(self.table, hookpoint, sae_name,
                                         resume=provenance.fingerprint if provenance else "")
        self.parts: list[dict[str, np.ndarray]] = []

    @property
    def label(self) -> str:
        return f"{self.table}[{self.hookpoint}{'|' + self.sae_name if self.sae_name else ''}]"

    def chunk_path(self, chunk: int) -> Path:
        return self.staging / f"part-{chunk:05d}.parquet"

    def done(self, chunk: int) -> bool:
        return self.chunk_path(chunk).exists()

    def add(self, ctx_ids: Tensor, acts: Tensor) -> None:
        raise NotImplementedError

    def take_chunk(self, chunk: int) -> Callable[[], None]:
        """Hand the chunk's rows over; the returned function builds and writes its file (in a thread)."""
        parts, self.parts = self.parts, []
        path = self.chunk_path(chunk)
        return lambda: write_parquet(self.build_table(parts), path)

    def build_table(self, parts: list[dict[str, np.ndarray]]) -> pa.Table:
        raise NotImplementedError

    def commit(self) -> Path:
        return self.lake.commit(self.staging, self.table, self.hookpoint, self.sae_name, self.provenance)


class ActivationSink(Sink):
    """Dense float16 activations: one row per token, (ctx_id, pos, act[d])."""

    table = "activations"

    def add(self, ctx_ids: Tensor, acts: Tensor) -> None:
        b, t, d = acts.shape
        self.parts.append(
            {
                "ctx_id": np.repeat(ctx_ids.numpy(), t),
                "pos": np.tile(np.arange(t, dtype=np.int16), b),
                "act": to_float16(acts.reshape(b * t, d)),
            }
        )

    def build_table(self, parts):
        d = parts[0]["act"].shape[1]
        act = np.concatenate([p["act"] for p in parts]).reshape(-1)
        return pa.table(
            {
                "ctx_id": np.concatenate([p["ctx_id"] for p in parts]),
                "pos": np.concatenate([p["pos"] for p in parts]),
                "act": pa.FixedSizeListArray.from_arrays(pa.array(act), d),
            }
        )


class LatentSink(Sink):
    """Sparse SAE codes: one row per non-zero (latent, ctx_id, pos, act), sorted by latent in each file."""

    table = "latents"

    def __init__(self, lake: Lake, hookpoint: str, provenance: Provenance | None, sae_name: str, sae: Sae,
                 reads: str | None = None):
        super().__init__(lake, hookpoint, provenance, sae_name, reads)
        self.sae = sae

    @torch.no_grad()
    def add(self, ctx_ids: Tensor, acts: Tensor) -> None:
        b, t, d = acts.shape
        codes = self.sae.encode(acts.reshape(b * t, d))
        rows = codes.rows.cpu().numpy()
        self.parts.append(
            {
                "latent": codes.latents.to(torch.int32).cpu().numpy(),
                "ctx_id": ctx_ids.numpy()[rows // t],
                "pos": (rows % t).astype(np.int16),
                "act": to_float16(codes.values),
            }
        )

    def build_table(self, parts):
        return sorted_latents(parts)


def sorted_latents(parts: list[dict[str, np.ndarray]]) -> pa.Table:
    """One chunk's rows as a latents table, sorted by (latent, ctx_id, pos): that groups each latent's rows,
    which is what makes per-latent SQL cheap and ZSTD effective (< 5 bytes per non-zero)."""
    columns = {name: np.concatenate([p[name] for p in parts]) for name in LATENTS_SCHEMA.names}
    key = (columns["latent"].astype(np.int64) << 40) | (columns["ctx_id"].astype(np.int64) << 16) | columns["pos"]
    order = np.argsort(key)
    return pa.table({name: columns[name][order] for name in LATENTS_SCHEMA.names}, schema=LATENTS_SCHEMA)


class PlantedSink(Sink):
    """Planted latents (sae/saes/planted.py), fed the contexts' token ids instead of activations: the same
    rows, order, files and commit as a LatentSink."""

    table = "latents"

    def __init__(self, lake: Lake, hookpoint: str, provenance: Provenance | None, sae_name: str, planted):
        super().__init__(lake, hookpoint, provenance, sae_name)
        self.planted = planted
        self.lookup = planted.lookup()

    def add(self, ctx_ids: np.ndarray, tokens: np.ndarray) -> None:
        self.parts.append(self.planted.encode(ctx_ids, tokens, self.lookup))

    def build_table(self, parts):
        return sorted_latents(parts)


def run_planted(tokens: np.ndarray | ContextTokens, sinks: list[PlantedSink], chunk_contexts: int) -> CacheReport:
    """Planted latents of every sink, chunk by chunk (resuming from the chunks already staged); then commit."""
    n_contexts, ctx_len = tokens.shape
    report = CacheReport()
    start = time.perf_counter()
    for chunk in range(-(-n_contexts // chunk_contexts)):
        active = [s for s in sinks if not s.done(chunk)]
        if not active:
            report.chunks_skipped += 1
            continue
        lo, hi = chunk * chunk_contexts, min((chunk + 1) * chunk_contexts, n_contexts)
        ids = np.asarray(tokens[lo:hi], dtype=np.int64)
        for sink in active:
            sink.add(np.arange(lo, hi, dtype=np.int32), ids)
            sink.take_chunk(chunk)()
        report.tokens += (hi - lo) * ctx_len
        report.chunks_computed += 1
    report.seconds = time.perf_counter() - start
    for sink in sinks:
        sink.commit()
    return report


@dataclass
class CacheReport:
    tokens: int = 0
    seconds: float = 0.0
    chunks_computed: int = 0
    chunks_skipped: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def run_cache(
    model,
    tokens: np.ndarray | ContextTokens,
    sinks: list[Sink],
    batch_size: int,
    chunk_contexts: int,
    progress: bool = True,
    after_chunk: Callable[[int], None] | None = None,
) -> CacheReport:
    """Run `model` over `tokens` [n_contexts, ctx_len] once, feeding every sink; then commit each partition.

    `after_chunk(chunk)` is called after each chunk is handed to the writer (tests inject failures there).
    """
    n_contexts, ctx_len = tokens.shape
    n_chunks = -(-n_contexts // chunk_contexts)
    device = next(model.parameters()).device
    report = CacheReport()
    todo = [c for c in range(n_chunks) if not all(s.done(c) for s in sinks)]
    report.chunks_skipped = n_chunks - len(todo)
    if report.chunks_skipped:
        log.info("resuming: %d of %d chunks already on disk", report.chunks_skipped, n_chunks)
    start = time.perf_counter()
    pending: deque[Future] = deque()
    todo_tokens = sum(min(chunk_contexts, n_contexts - c * chunk_contexts) for c in todo) * ctx_len
    bar = tqdm(total=todo_tokens, unit="tok", unit_scale=True, disable=not progress,
               desc="caching " + ", ".join(s.label for s in sinks))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer") as writer, \
            capture(model, sorted({s.reads for s in sinks})) as forward:
        for chunk in todo:
            active = [s for s in sinks if not s.done(chunk)]
            lo, hi = chunk * chunk_contexts, min((chunk + 1) * chunk_contexts, n_contexts)
            for b0 in range(lo, hi, batch_size):
                b1 = min(b0 + batch_size, hi)
                ids = torch.tensor(tokens[b0:b1], dtype=torch.long).to(device, non_blocking=True)
                outputs = forward(ids)
                ctx_ids = torch.arange(b0, b1, dtype=torch.int32)
                for sink in active:
                    sink.add(ctx_ids, outputs[sink.reads])
                report.tokens += (b1 - b0) * ctx_len
                bar.update((b1 - b0) * ctx_len)
            for sink in active:
                pending.append(writer.submit(sink.take_chunk(chunk)))
            while len(pending) > MAX_PENDING_WRITES * len(active):
                pending.popleft().result()
            report.chunks_computed += 1
            if after_chunk is not None:
                after_chunk(chunk)
        while pending:
            pending.popleft().result()
    bar.close()
    report.seconds = time.perf_counter() - start
    for sink in sinks:
        sink.commit()
    return report


def chunk_contexts_for(ctx_len: int, chunk_tokens: int) -> int:
    return max(1, chunk_tokens // ctx_len)

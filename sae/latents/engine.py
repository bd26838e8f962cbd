"""The caching engine: one forward pass over the contexts feeds every sink (dense activations, SAE latents).

The contexts are cut into chunks of `chunk_contexts`; each sink writes one Parquet file per chunk into
its partition's staging folder. Memory is bounded by one chunk per sink plus the writer queue, whatever
`n_tokens` is. A chunk file is written atomically, so after a crash the rerun skips the chunks already
on disk (when the staging fingerprint matches) and recomputes the rest with the same batches, giving the
same rows. Compression and writing run in background threads while the model computes the next batch.

On a GPU the main loop never waits for the device: each batch's outputs go to pinned host buffers by
non-blocking copies, one CUDA event per chunk marks them done, and the writer waits on that event before it
turns them into NumPy arrays, sorts and compresses them. On CPU the copies are the tensors themselves.
"""

from __future__ import annotations

import logging
import os
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
# Sorting and compressing a chunk costs about as much CPU time as a GPU needs to compute several chunks of a
# small model, so chunks are written by several threads (NumPy, torch's sort and Parquet release the GIL).
WRITER_THREADS = min(4, os.cpu_count() or 1)
MAX_PENDING_WRITES = WRITER_THREADS  # chunks queued per sink while the next is computed; bounds memory


def to_float16(values: Tensor) -> Tensor:
    """float16 for storage, saturating at its largest finite value instead of overflowing to inf."""
    limit = torch.finfo(torch.float16).max
    return values.clamp(-limit, limit).to(torch.float16)


def to_host(values: Tensor) -> Tensor:
    """A host copy that does not wait for the device: on CUDA a non-blocking copy into pinned memory, valid
    once an event recorded after it has completed (see `copies_done`); on CPU the tensor itself."""
    if values.device.type == "cpu":
        return values
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    return host


def copies_done(device: torch.device) -> torch.cuda.Event | None:
    """An event that completes when every copy issued so far on `device`'s current stream has landed."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


class Sink:
    """Receives a hookpoint's activations batch by batch and writes one file per chunk."""

    table: str

    def __init__(self, lake: Lake, hookpoint: str, provenance: Provenance | None, sae_name: str | None = None,
                 reads: str | None = None, staging: Path | None = None):
        self.lake = lake
        self.hookpoint = hookpoint
        self.reads = reads or hookpoint  # the activations it is fed (the MLP input for a transcoder, ...)
        self.sae_name = sae_name
        self.provenance = provenance
        # Chunks already staged with the same settings are kept: a rerun after a crash resumes from them. A
        # caching shard is handed the folder its driver opened (sae/latents/shards.py).
        self.staging = staging or lake.open_staging(self.table, hookpoint, sae_name,
                                                    resume=provenance.fingerprint if provenance else "")
        self.parts: list = []  # this chunk's batches, as host tensors (see `to_host`)

    @property
    def label(self) -> str:
        return f"{self.table}[{self.hookpoint}{'|' + self.sae_name if self.sae_name else ''}]"

    def chunk_path(self, chunk: int) -> Path:
        return self.staging / chunk_file(chunk)

    def done(self, chunk: int) -> bool:
        return self.chunk_path(chunk).exists()

    def add(self, ctx_ids: Tensor, acts: Tensor) -> None:
        raise NotImplementedError

    def take_chunk(self, chunk: int, copied: torch.cuda.Event | None = None) -> Callable[[], None]:
        """Hand the chunk's rows over; the returned function waits for `copied` (the event after the chunk's
        host copies, None on CPU), then builds and writes its file (in a writer thread)."""
        parts, self.parts = self.parts, []
        path = self.chunk_path(chunk)

        def write() -> None:
            if copied is not None:
                copied.synchronize()
            write_parquet(self.build_table(parts), path)

        return write

    def build_table(self, parts: list) -> pa.Table:
        raise NotImplementedError

    def commit(self) -> Path:
        return self.lake.commit(self.staging, self.table, self.hookpoint, self.sae_name, self.provenance)


class ActivationSink(Sink):
    """Dense float16 activations: one row per token, (ctx_id, pos, act[d])."""

    table = "activations"

    def add(self, ctx_ids: Tensor, acts: Tensor) -> None:
        self.parts.append((ctx_ids, to_host(to_float16(acts))))

    def build_table(self, parts):
        t, d = parts[0][1].shape[1:]
        ctx_ids = np.concatenate([ids.numpy() for ids, _ in parts])
        act = np.concatenate([acts.numpy().reshape(-1) for _, acts in parts])
        return pa.table(
            {
                "ctx_id": np.repeat(ctx_ids, t),
                "pos": np.tile(np.arange(t, dtype=np.int16), len(ctx_ids)),
                "act": pa.FixedSizeListArray.from_arrays(pa.array(act), d),
            }
        )


class LatentSink(Sink):
    """Sparse SAE codes: one row per non-zero (latent, ctx_id, pos, act), sorted by latent in each file."""

    table = "latents"

    def __init__(self, lake: Lake, hookpoint: str, provenance: Provenance | None, sae_name: str, sae: Sae,
                 reads: str | None = None, staging: Path | None = None):
        super().__init__(lake, hookpoint, provenance, sae_name, reads, staging)
        self.sae = sae

    @torch.no_grad()
    def add(self, ctx_ids: Tensor, acts: Tensor) -> None:
        b, t, d = acts.shape
        x = acts.reshape(b * t, d)
        if self.sae.cfg.architecture == "topk":
            # A fixed k codes per token: they go to the host as they are, without waiting for the device;
            # the writer drops the zeros (the ReLU before the top-k makes some).
            values, latents = self.sae.encode_topk(x)
            rows = None
        else:
            # Codes of varying width: finding the non-zeros waits for the device whatever is done here.
            codes = self.sae.encode(x)
            rows, latents, values = to_host(codes.rows), codes.latents, codes.values
        self.parts.append(BatchCodes(ctx_ids, t, to_host(latents.to(torch.int32)), to_host(values.float()), rows))

    def build_table(self, parts):
        return sorted_latents([p.columns() for p in parts])


def sorted_latents(parts: list[dict[str, np.ndarray]]) -> pa.Table:
    """One chunk's rows as a latents table, sorted by (latent, ctx_id, pos): that groups each latent's rows,
    which is what makes per-latent SQL cheap and ZSTD effective (< 5 bytes per non-zero).

    The rows must arrive in (ctx_id, pos) order, as every sink adds them, and a latent fires at most once per
    token: then a stable sort by latent alone gives that order, and a radix sort of one 32-bit column is several
    times cheaper than an argsort of a 64-bit key."""
    columns = {name: np.concatenate([p[name] for p in parts]) for name in LATENTS_SCHEMA.names}
    order = torch.sort(torch.from_numpy(columns["latent"]), stable=True).indices.numpy()
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
class BatchCodes:
    """One batch's codes on the host (once its copies have landed), turned into columns by the writer.

    TopK: `latents` and `values` are [tokens, k], token i's codes in row i, zeros included (`rows` None).
    Otherwise they are [nnz] with `rows` [nnz], each non-zero's token index in the batch.
    """

    ctx_ids: Tensor  # int32 [contexts]
    ctx_len: int
    latents: Tensor  # int32
    values: Tensor  # float32
    rows: Tensor | None

    def columns(self) -> dict[str, np.ndarray]:
        """The batch's rows in the latents schema, in (ctx_id, pos) order."""
        latents, values = self.latents.numpy().reshape(-1), self.values.numpy().reshape(-1)
        if self.rows is None:
            keep = values > 0
            rows = np.repeat(np.arange(self.latents.shape[0]), self.latents.shape[1])[keep]
            latents, values = latents[keep], values[keep]
        else:
            rows = self.rows.numpy()
        return {"latent": latents, "ctx_id": self.ctx_ids.numpy()[rows // self.ctx_len],
                "pos": (rows % self.ctx_len).astype(np.int16), "act": to_float16(torch.from_numpy(values)).numpy()}


@dataclass
class CacheReport:
    tokens: int = 0
    seconds: float = 0.0
    chunks_computed: int = 0
    chunks_skipped: int = 0
    shards: int = 1  # the context ranges the work was split into

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @classmethod
    def of_shards(cls, reports: list[CacheReport], seconds: float) -> CacheReport:
        """The shards' reports as one, over the `seconds` they took together (side by side on several workers)."""
        return cls(sum(r.tokens for r in reports), seconds, sum(r.chunks_computed for r in reports),
                   sum(r.chunks_skipped for r in reports), len(reports))


def run_cache(
    model,
    tokens: np.ndarray | ContextTokens,
    sinks: list[Sink],
    batch_size: int,
    chunk_contexts: int,
    progress: bool = True,
    after_chunk: Callable[[int], None] | None = None,
    chunks: range | None = None,
    commit: bool = True,
) -> CacheReport:
    """Run `model` over `tokens` [n_contexts, ctx_len] once, feeding every sink; then commit each partition
    (unless `commit` is false: a shard of the stage, whose driver commits once every shard is staged).

    `chunks` are the chunks to do (None: all of them). `after_chunk(chunk)` is called after each chunk is handed
    to the writer (tests inject failures there).
    """
    n_contexts, ctx_len = tokens.shape
    chunks = range(-(-n_contexts // chunk_contexts)) if chunks is None else chunks
    device = next(model.parameters()).device
    report = CacheReport()
    todo = [c for c in chunks if not all(s.done(c) for s in sinks)]
    report.chunks_skipped = len(chunks) - len(todo)
    if report.chunks_skipped:
        log.info("resuming: %d of %d chunks already on disk", report.chunks_skipped, len(chunks))
    start = time.perf_counter()
    pending: deque[Future] = deque()
    todo_tokens = sum(min(chunk_contexts, n_contexts - c * chunk_contexts) for c in todo) * ctx_len
    bar = tqdm(total=todo_tokens, unit="tok", unit_scale=True, disable=not progress,
               desc="caching " + ", ".join(s.label for s in sinks))
    with ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="lake-writer") as writer, \
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
            copied = copies_done(device)
            for sink in active:
                pending.append(writer.submit(sink.take_chunk(chunk, copied)))
            while len(pending) > MAX_PENDING_WRITES * len(active):
                pending.popleft().result()
            report.chunks_computed += 1
            if after_chunk is not None:
                after_chunk(chunk)
        while pending:
            pending.popleft().result()
    bar.close()
    report.seconds = time.perf_counter() - start
    if commit:
        for sink in sinks:
            sink.commit()
    return report


def chunk_contexts_for(ctx_len: int, chunk_tokens: int) -> int:
    return max(1, chunk_tokens // ctx_len)


def chunk_file(chunk: int) -> str:
    """The name of a chunk's part file in its partition."""
    return f"part-{chunk:05d}.parquet"

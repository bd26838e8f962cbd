"""The stages of the pipeline as plain functions over a config and a lake; the Dagster assets call these."""

from __future__ import annotations

import hashlib
import logging
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from .cache import ActivationSink, CacheReport, LatentSink, chunk_contexts_for, run_cache
from .codecs import Sae, SaeConfig, detect_format, load_sae, save_sae
from .config import PipelineConfig, SaeSpec
from .corpus import ContextTokens, iter_documents, tokenize_contexts
from .hookpoints import hookpoint_width, source_hookpoint
from .lake import Lake
from .models import load_model, load_tokenizer, model_source, resolve_device
from .quality import LayerBaseline, layer_baseline, spliced_loss
from .sql import run_query
from .train import SaeMetrics, evaluate, holdout_start, iter_activations, train_topk

log = logging.getLogger(__name__)

CONTEXT_KEYS = ("corpus", "n_tokens", "ctx_len")
FINGERPRINT_META = b"saelake.fingerprint"
CONTEXTS_PER_ROW_GROUP = 256  # the unit in which the caching stages read contexts
# Held-out share of the contexts for SAEs that were not trained here (they saw none of this corpus).
PRETRAINED_HOLDOUT_FRACTION = 0.05


class StaleDataError(RuntimeError):
    """An upstream table was built from other settings than the current config."""


def lake_for(cfg: PipelineConfig) -> Lake:
    return Lake(cfg.lake)


def contexts_fingerprint(cfg: PipelineConfig) -> str:
    """What the contexts depend on: the corpus, the sizes, and the model's tokenizer (not device or dtype)."""
    return cfg.fingerprint(*CONTEXT_KEYS) + f"/{cfg.model.name}@{cfg.model.revision}"


# contexts -----------------------------------------------------------------------------------------------


def build_contexts(cfg: PipelineConfig) -> pa.Table:
    lake = lake_for(cfg)
    tokenizer = load_tokenizer(cfg.model, lake.root)
    table = tokenize_contexts(iter_documents(cfg.corpus), tokenizer, cfg.n_contexts, cfg.ctx_len)
    if table.num_rows < cfg.n_contexts:
        log.warning("the corpus ran out: %d contexts instead of %d", table.num_rows, cfg.n_contexts)
    table = table.replace_schema_metadata({FINGERPRINT_META: contexts_fingerprint(cfg).encode()})
    lake.write_partition(table, "contexts", row_group_size=CONTEXTS_PER_ROW_GROUP)
    return table


def load_context_tokens(cfg: PipelineConfig) -> ContextTokens:
    """The contexts as a lazily read int32 array [n_contexts, ctx_len], checked to match the current config."""
    files = lake_for(cfg).files("contexts")
    if not files:
        raise FileNotFoundError(f"no contexts in {cfg.lake}: materialize the `contexts` asset first")
    stored = (pq.read_schema(files[0]).metadata or {}).get(FINGERPRINT_META, b"").decode()
    if stored != contexts_fingerprint(cfg):
        raise StaleDataError(
            "the contexts in the lake were built with another model, corpus, n_tokens or ctx_len than the "
            "current config: materialize `contexts` again"
        )
    return ContextTokens(files[0])


# activations and latents ---------------------------------------------------------------------------------


def _run_fingerprint(cfg: PipelineConfig, extra: str = "") -> str:
    # Activations depend on the model's dtype and the batch shapes too, not on where they were computed.
    return f"{contexts_fingerprint(cfg)}/{cfg.fingerprint('batch_size', 'chunk_tokens')}/{cfg.model.dtype}{extra}"


def cache_activations(cfg: PipelineConfig, hookpoints: list[str], progress: bool = True, **hooks) -> CacheReport:
    """Dense float16 activations of `hookpoints`, all from one forward pass."""
    return _cache(cfg, lambda lake, device: [ActivationSink(lake, h, _run_fingerprint(cfg)) for h in hookpoints],
                  progress, hooks)


def cache_latents(cfg: PipelineConfig, partitions: list[tuple[str, str]], progress: bool = True,
                  **hooks) -> CacheReport:
    """Latents of every (hookpoint, sae) partition, all from one forward pass of the model."""

    def sinks(lake: Lake, device: torch.device) -> list[LatentSink]:
        made = []
        for hookpoint, name in partitions:
            sae = load_stored_sae(cfg, hookpoint, name).to(device)
            fingerprint = _run_fingerprint(cfg, _folder_hash(lake.partition("saes", hookpoint, name)))
            reads = reads_from(cfg, hookpoint, name, sae)
            made.append(LatentSink(lake, hookpoint, fingerprint, name, sae, reads=reads))
        return made

    return _cache(cfg, sinks, progress, hooks)


def _cache(cfg: PipelineConfig, make_sinks, progress: bool, hooks: dict) -> CacheReport:
    lake = lake_for(cfg)
    tokens = load_context_tokens(cfg)
    model = load_model(cfg.model, lake.root)
    sinks = make_sinks(lake, next(model.parameters()).device)
    chunk = chunk_contexts_for(cfg.ctx_len, cfg.chunk_tokens)
    return run_cache(model, tokens, sinks, cfg.batch_size, chunk, progress, **hooks)


def _folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# SAEs --------------------------------------------------------------------------------------------------


@dataclass
class SaeResult:
    sae: Sae
    metrics: SaeMetrics | None
    folder: Path
    written_format: str


def width_at(cfg: PipelineConfig, hookpoint: str) -> int:
    from transformers import AutoConfig

    source = model_source(cfg.model, lake_for(cfg).root)
    return hookpoint_width(AutoConfig.from_pretrained(source, revision=cfg.model.revision), hookpoint)


def check_d_in(sae: Sae, width: int, where: str) -> None:
    if sae.cfg.d_in != width:
        raise ValueError(
            f"{where} has d_in={sae.cfg.d_in}, but the model's hidden size at this hookpoint is {width}: "
            "the SAE was trained on another model or hookpoint"
        )


def train_saes(cfg: PipelineConfig, hookpoint: str, names: list[str], progress: bool = True) -> dict[str, Sae]:
    """Train the named SAEs of one layer, those that share a stream (epochs, batch size, held-out
    fraction) from one pass over the activations per epoch."""
    lake = lake_for(cfg)
    files = lake.files("activations", hookpoint)
    n_contexts = int(pq.read_metadata(lake.files("contexts")[0]).num_rows)
    groups: dict[tuple, list[str]] = {}
    for name in names:
        train = cfg.sae(name).train
        groups.setdefault((train.epochs, train.batch_size, train.holdout_fraction), []).append(name)
    trained = {}
    for group in groups.values():
        saes = train_topk(files, width_at(cfg, hookpoint), [cfg.sae(n).train for n in group],
                          [init_seed(cfg.seed, n) for n in group], n_contexts, cfg.ctx_len, cfg.seed,
                          resolve_device(cfg.model.device), hookpoint, progress)
        trained.update(zip(group, saes, strict=True))
    return trained


def init_seed(seed: int, name: str) -> int:
    """Each SAE variant's own initialisation seed, so it does not depend on which others train beside it."""
    return seed * 1_000_003 + zlib.crc32(name.encode())


def build_sae(cfg: PipelineConfig, hookpoint: str, name: str, progress: bool = True,
              trained: Sae | None = None) -> SaeResult:
    """Train (unless `trained` is given) or load one SAE variant of one layer, evaluate it, store it."""
    lake = lake_for(cfg)
    spec = cfg.sae(name)
    device = resolve_device(cfg.model.device)
    hidden = width_at(cfg, hookpoint)
    activation_files = lake.files("activations", hookpoint)
    n_contexts = cfg.n_contexts
    if activation_files:
        n_contexts = int(pq.read_metadata(lake.files("contexts")[0]).num_rows)
    folder = None
    holdout = spec.train.holdout_fraction if spec.train else PRETRAINED_HOLDOUT_FRACTION
    if spec.neurons is not None:
        sae = neuron_codec(width_at(cfg, reads_from(cfg, hookpoint, name)), spec.neurons.k).to(device)
        activation_files = []  # the stored activations are the hookpoint's, not the neurons'
    elif spec.train is not None:
        sae = trained if trained is not None else train_saes(cfg, hookpoint, [name], progress)[name]
    else:
        folder = pretrained_folder(spec, hookpoint)
        detect_format(folder)  # a clear error before any work
        sae = load_sae(folder, hookpoint).to(device)
        check_d_in(sae, hidden, f"SAE {name!r} at {folder}")
    metrics = None
    if activation_files and not sae.cfg.transcode:
        held_from = holdout_start(n_contexts, holdout)
        metrics = evaluate(sae, iter_activations(activation_files, 4096, held_from, heldout=True), device)
        everything = evaluate(sae, iter_activations(activation_files, 4096, None, heldout=False), device)
        metrics.dead_fraction = everything.dead_fraction
    staging = lake.staging("saes", hookpoint, name)
    shutil.rmtree(staging, ignore_errors=True)
    written = save_sae(sae, staging)
    final = lake.partition("saes", hookpoint, name)
    lake.commit(staging, final)
    row = {
        "architecture": sae.cfg.architecture, "num_latents": sae.num_latents, "k": sae.cfg.k or 0,
        "d_in": sae.cfg.d_in, "source": str(folder) if folder else ("neurons" if spec.neurons else "trained"),
        **(metrics.as_dict() if metrics else {"fvu": None, "l0": None, "dead_fraction": None, "n_eval_tokens": 0}),
    }
    lake.write_partition(pa.Table.from_pylist([row]), "sae_metrics", hookpoint, name)
    return SaeResult(sae, metrics, final, written)


def neuron_codec(width: int, k: int | None) -> Sae:
    """The MLP neurons as an identity 'SAE' over the hidden activations: positive values, or the top k."""
    eye = torch.eye(width)
    architecture = "relu" if k is None else "topk"
    config = SaeConfig(architecture, width, width, k=k, apply_b_dec_to_input=False, source_format="neurons")
    return Sae(config, W_enc=eye, b_enc=torch.zeros(width), W_dec=eye.clone(), b_dec=torch.zeros(width))


def reads_from(cfg: PipelineConfig, hookpoint: str, name: str, sae: Sae | None = None) -> str:
    """The activations a variant at `hookpoint` encodes (the hookpoint, the MLP input, or the neurons)."""
    transcode = bool(sae is not None and sae.cfg.transcode)
    return source_hookpoint(hookpoint, transcode=transcode, neurons=cfg.sae(name).neurons is not None)


def pretrained_folder(spec: SaeSpec, hookpoint: str) -> Path:
    """The local folder of a pretrained SAE; a Hub SAE is downloaded (only its subfolder) and cached."""
    if spec.hub is None:
        return spec.path_for(hookpoint)
    import huggingface_hub

    subfolder = spec.subfolder_for(hookpoint)
    root = huggingface_hub.snapshot_download(
        spec.hub, revision=spec.revision, allow_patterns=[f"{subfolder}/*"] if subfolder else None
    )
    return Path(root) / subfolder


def load_stored_sae(cfg: PipelineConfig, hookpoint: str, name: str) -> Sae:
    folder = lake_for(cfg).partition("saes", hookpoint, name)
    if not folder.exists():
        raise FileNotFoundError(f"no SAE at {folder}: materialize `saes` for partition {hookpoint}|{name} first")
    return load_sae(folder, hookpoint)


# quality -----------------------------------------------------------------------------------------------


def eval_context_range(cfg: PipelineConfig, n_contexts: int) -> tuple[int, int]:
    """The held-out contexts used for the spliced-in loss: inside every trained SAE's held-out set."""
    fractions = [spec.train.holdout_fraction for spec in cfg.saes if spec.train] or [PRETRAINED_HOLDOUT_FRACTION]
    start = max(holdout_start(n_contexts, min(fractions)), n_contexts - cfg.eval_contexts)
    return start, n_contexts


def measure_quality(cfg: PipelineConfig, partitions: list[tuple[str, str]]) -> list[dict]:
    """Spliced-in CE increase of every (hookpoint, sae), joined with its FVU / L0 / dead fraction."""
    import duckdb

    lake = lake_for(cfg)
    tokens = load_context_tokens(cfg)
    lo, hi = eval_context_range(cfg, tokens.shape[0])
    held_out = tokens[lo:hi]
    model = load_model(cfg.model, lake.root)
    device = next(model.parameters()).device
    rows = []
    baselines: dict[str, LayerBaseline] = {}
    for hookpoint, name in partitions:
        sae = load_stored_sae(cfg, hookpoint, name).to(device)
        # Neurons are spliced where they are read (the down projection's input); SAEs and transcoders
        # replace the activation at their hookpoint.
        point = reads_from(cfg, hookpoint, name) if cfg.sae(name).neurons else hookpoint
        if point not in baselines:
            baselines[point] = layer_baseline(model, held_out, point, cfg.batch_size)
        loss = spliced_loss(model, held_out, baselines[point], sae, cfg.batch_size)
        with duckdb.connect() as con:
            files = [str(f) for f in lake.files("sae_metrics", hookpoint, name)]
            architecture, num_latents, k, fvu, l0, dead = run_query(
                con, "sae_metrics_of_partition", files=files).fetchall()[0]
        row = {"architecture": architecture, "num_latents": num_latents, "k": k,
               "fvu": fvu if fvu is not None else loss.fvu, "l0": l0, "dead_fraction": dead, **loss.as_dict()}
        lake.write_partition(pa.Table.from_pylist([row]), "sae_quality", hookpoint, name)
        rows.append({"layer": hookpoint, "sae": name, **row})
    return rows


# statistics --------------------------------------------------------------------------------------------


def compute_latent_stats(cfg: PipelineConfig, hookpoint: str, name: str) -> pa.Table:
    lake = lake_for(cfg)
    files = lake.files("latents", hookpoint, name)
    if not files:
        raise FileNotFoundError(f"no latents for {hookpoint}|{name}: materialize `latents` first")
    num_latents = load_stored_sae(cfg, hookpoint, name).num_latents
    n_tokens = int(pq.read_metadata(lake.files("contexts")[0]).num_rows) * cfg.ctx_len
    import duckdb

    with duckdb.connect() as con:
        table = run_query(
            con, "latent_stats", files=[str(f) for f in files], num_latents=num_latents, n_tokens=n_tokens
        ).to_arrow_table()
    lake.write_partition(table, "latent_stats", hookpoint, name)
    return table



def count_rows(files: list[Path]) -> int:
    return sum(pq.read_metadata(f).num_rows for f in files)


def preview_latents(cfg: PipelineConfig, hookpoint: str, name: str, n: int = 5, window: int = 12) -> list[dict]:
    """The most frequent latents with the text around their peak activation, the peak token in «»."""
    import duckdb

    lake = lake_for(cfg)
    files = [str(f) for f in lake.files("latents", hookpoint, name)]
    with duckdb.connect() as con:
        top = run_query(con, "latent_preview", files=files, n=n).fetchall()
    tokens = load_context_tokens(cfg)
    tokenizer = load_tokenizer(cfg.model, lake.root)
    rows = []
    for latent, n_fired, max_act, peak in top:
        ids = tokens[peak["ctx_id"]]
        pos = peak["pos"]
        before = tokenizer.decode(ids[max(0, pos - window) : pos])
        after = tokenizer.decode(ids[pos + 1 : pos + 4])
        text = f"{before}«{tokenizer.decode(ids[pos : pos + 1])}»{after}"
        rows.append({"layer": hookpoint, "sae": name, "latent": latent, "n_fired": n_fired,
                     "max_act": max_act, "peak_context": text})
    return rows


def quality_summary(cfg: PipelineConfig) -> list[dict]:
    lake = lake_for(cfg)
    lake.refresh_views()
    with lake.connect(read_only=True) as con:
        relation = run_query(con, "quality_summary")
        columns = relation.columns
        return [dict(zip(columns, row)) for row in relation.fetchall()]


def preview_contexts(cfg: PipelineConfig, n: int = 3, chars: int = 160) -> list[dict]:
    """The first contexts as text (EOS shown as ⏎⏎), for a glance at what the model reads."""
    lake = lake_for(cfg)
    tokenizer = load_tokenizer(cfg.model, lake.root)
    tokens = load_context_tokens(cfg)
    rows = []
    for ctx_id in range(min(n, tokens.shape[0])):
        text = tokenizer.decode(tokens[ctx_id]).replace(tokenizer.eos_token, "⏎⏎")
        rows.append({"ctx_id": ctx_id, "text": text[:chars] + ("…" if len(text) > chars else "")})
    return rows


# examples ----------------------------------------------------------------------------------------------


def build_examples(cfg: PipelineConfig, hookpoint: str, name: str) -> tuple[pa.Table, pa.Table]:
    """Select every kind of example for every latent of one partition; store examples and coverage."""
    from .examples import coverage, select_examples

    lake = lake_for(cfg)
    load_context_tokens(cfg)  # refuses stale contexts
    # Hard negatives need decoder directions; the neuron baselines' stored decoder is the identity.
    decoder = None if cfg.sae(name).neurons else load_stored_sae(cfg, hookpoint, name).W_dec.detach()
    table = select_examples(lake.files("latents", hookpoint, name), lake.files("contexts")[0], name, cfg.examples,
                            cfg.seed, decoder=decoder)
    covered = coverage(table, cfg.examples)
    lake.write_partition(table, "examples", hookpoint, name)
    lake.write_partition(covered, "example_coverage", hookpoint, name)
    return table, covered


def preview_examples(cfg: PipelineConfig, table: pa.Table, n_latents: int = 3, per_latent: int = 2,
                     threshold: float = 0.5) -> list[dict]:
    """A few top windows of the first latents as text, tokens at >= `threshold` x peak marked «like this»."""
    tokenizer = load_tokenizer(cfg.model, lake_for(cfg).root)
    rows = []
    latents = sorted(set(table.column("latent").to_pylist()))[:n_latents]
    for example in table.filter(pc.field("kind") == "top").to_pylist():
        if example["latent"] not in latents or sum(r["latent"] == example["latent"] for r in rows) >= per_latent:
            continue
        peak = max(example["acts"]) or 1.0
        pieces = [tokenizer.decode([t]) for t in example["tokens"]]
        text = "".join(f"«{p}»" if a >= threshold * peak and a > 0 else p for p, a in zip(pieces, example["acts"]))
        rows.append({"latent": example["latent"], "kind": example["kind"], "peak_act": example["peak_act"],
                     "text": text})
    return rows

"""The stages of the pipeline as plain functions over a config and a lake; the Dagster assets call these."""

from __future__ import annotations

import hashlib
import logging
import math
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
from .config import LLMConfig, PipelineConfig, SaeSpec
from .corpus import ContextTokens, iter_documents, tokenize_contexts
from .hookpoints import hookpoint_width, source_hookpoint
from .lake import Lake
from .llm.cache import CachedClient
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


# explanations ------------------------------------------------------------------------------------------


def token_decoder(cfg: PipelineConfig):
    """Token ids -> their texts one by one (memoised), as the prompts show them."""
    tokenizer = load_tokenizer(cfg.model, lake_for(cfg).root)
    pieces: dict[int, str] = {}

    def decode(ids) -> list[str]:
        out = []
        for i in ids:
            if i not in pieces:
                pieces[i] = tokenizer.decode([i])
            out.append(pieces[i])
        return out

    return decode


def open_llm(cfg: PipelineConfig, llm: LLMConfig) -> CachedClient:
    """The configured LLM backend behind the lake's response cache."""
    from .llm import make_client

    lake = lake_for(cfg)
    return CachedClient(make_client(llm, lake.root), lake.root / "llm_cache")


def explain_fingerprint(cfg: PipelineConfig, name: str) -> str:
    """Everything that shapes a partition's explanations: the data behind the examples, the SAE, the LLM,
    the prompt and the sampling. Throughput settings (batch sizes, URLs, keys) are left out."""
    from .prompts import explainer_version

    explain = cfg.explain
    shaping = {"llm": explain.llm.identity(), "prompt": explainer_version(explain.prompt),
               "n_examples": explain.n_examples, "max_tokens": explain.max_tokens,
               "temperature": explain.temperature, "sae": repr(cfg.sae(name))}
    digest = hashlib.sha256(repr(sorted(shaping.items())).encode()).hexdigest()[:16]
    return f"{contexts_fingerprint(cfg)}/{cfg.fingerprint('examples', 'seed')}/{digest}"


def explain_latents(cfg: PipelineConfig, hookpoint: str, name: str, client, progress: bool = True) -> pa.Table:
    from .explain import explain_partition

    lake = lake_for(cfg)
    examples, covered = lake.files("examples", hookpoint, name), lake.files("example_coverage", hookpoint, name)
    if not examples or not covered:
        raise FileNotFoundError(f"no examples for {hookpoint}|{name}: materialize `examples` first")
    return explain_partition(lake, hookpoint, name, pq.read_table(examples[0]), pq.read_table(covered[0]),
                             cfg.explain, client, token_decoder(cfg), cfg.seed, explain_fingerprint(cfg, name),
                             progress=progress)


def preview_explanations(cfg: PipelineConfig, hookpoint: str, name: str, table: pa.Table, n: int = 8) -> list[dict]:
    """The first explained latents with their explanation and strongest example, active tokens <<marked>>."""
    from .explain import top_window_text

    examples = pq.read_table(lake_for(cfg).files("examples", hookpoint, name)[0])
    decode = token_decoder(cfg)
    return [{"layer": hookpoint, "sae": name, "latent": row["latent"],
             "explanation": row["explanation"] if row["parsed"] else f"(unparsed) {row['completion'][:80]}",
             "top_example": top_window_text(examples, row["latent"], decode)}
            for row in table.slice(0, n).to_pylist()]


# scores ------------------------------------------------------------------------------------------------


def open_embedder(cfg: PipelineConfig):
    from .embedding import Embedder

    return Embedder(cfg.score.embedder, device=cfg.score.embedder_device)


def score_explanations(cfg: PipelineConfig, hookpoint: str, name: str, client, embedder,
                       progress: bool = True) -> pa.Table:
    """Score one partition's explanations on its test windows; written to `scores`."""
    from .scoring import score_partition

    lake = lake_for(cfg)
    examples, explained = lake.files("examples", hookpoint, name), lake.files("explanations", hookpoint, name)
    if not examples or not explained:
        raise FileNotFoundError(f"no explanations for {hookpoint}|{name}: materialize `explanations` first")
    table = score_partition(pq.read_table(examples[0]), pq.read_table(explained[0]), cfg.score, token_decoder(cfg),
                            cfg.seed, cfg.examples.n_quantiles, cfg.explain.prompt.highlight_threshold,
                            client=client, embedder=embedder, progress=progress)
    lake.write_partition(table, "scores", hookpoint, name)
    return table


def score_summary(cfg: PipelineConfig) -> pa.Table:
    """Per layer, SAE variant, scorer and source: means of the per-latent scores with bootstrap intervals."""
    from .metrics import bootstrap_mean_ci

    lake = lake_for(cfg)
    lake.refresh_views()
    with lake.connect(read_only=True) as con:
        groups = run_query(con, "score_values").to_arrow_table().to_pylist()
    rows = []
    for g in groups:
        row = {k: g[k] for k in ("layer", "sae", "scorer", "source", "n_latents", "n_examples", "n_failures")}
        for metric in ("balanced_accuracy", "f1", "auc"):
            values = [math.nan if v is None else v for v in g[metric]]
            mean, lo, hi = bootstrap_mean_ci(values, n_boot=cfg.score.bootstrap, seed=cfg.seed)
            row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
        row["bin_accuracy"] = g["bin_accuracy"]
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    if rows:
        lake.write_partition(table, "score_summary")
    return table


def mean_scores(table: pa.Table) -> list[dict]:
    """Mean balanced accuracy and AUC per scorer and source of one partition, for its run's metadata."""
    import duckdb

    with duckdb.connect() as con:
        con.register("partition_scores", table)
        relation = run_query(con, "score_means")
        return [dict(zip(relation.columns, row)) for row in relation.fetchall()]


def summary_rows(table: pa.Table) -> list[dict]:
    """The summary for display: each mean with its interval, real and control of a scorer side by side."""
    def cell(row: dict, metric: str) -> str:
        if row[metric] is None or math.isnan(row[metric]):
            return "–"
        return f"{row[metric]:.3f} [{row[f'{metric}_lo']:.3f}, {row[f'{metric}_hi']:.3f}]"

    return [{"layer": r["layer"], "sae": r["sae"], "scorer": r["scorer"], "source": r["source"],
             "latents": r["n_latents"], "balanced_accuracy": cell(r, "balanced_accuracy"), "auc": cell(r, "auc"),
             "failures": f"{r['n_failures']}/{r['n_examples'] + r['n_failures']}"} for r in table.to_pylist()]


def score_plots(cfg: PipelineConfig, summary: pa.Table) -> dict[str, str]:
    """Score histograms (real vs control) and accuracy by quantile bin, as markdown images; the PNGs are
    also written under lake/plots/."""
    from collections import defaultdict

    from .plots import accuracy_by_quantile, markdown_image, score_histograms

    lake = lake_for(cfg)
    with lake.connect(read_only=True) as con:
        points = run_query(con, "score_points").to_arrow_table().to_pylist()
    panels = defaultdict(lambda: defaultdict(list))
    for p in points:
        label = "AUC" if p["scorer"] == "embedding" else "balanced accuracy"
        panels[f"{p['scorer']} ({label})"][p["source"]].append(math.nan if p["value"] is None else p["value"])
    plots = {"score_histograms": markdown_image(
        score_histograms(panels, metric="score", path=lake.root / "plots" / "score_histograms.png"), "scores")}
    by_scorer = defaultdict(dict)
    for row in summary.to_pylist():
        if row["source"] == "real" and row["bin_accuracy"]:
            by_scorer[row["scorer"]][f"{row['layer']}/{row['sae']}"] = [
                math.nan if v is None else v for v in row["bin_accuracy"]]
    for scorer, per_variant in sorted(by_scorer.items()):
        png = accuracy_by_quantile(per_variant, path=lake.root / "plots" / f"accuracy_by_quantile_{scorer}.png")
        plots[f"accuracy_by_quantile_{scorer}"] = markdown_image(png, f"{scorer} accuracy by quantile")
    return plots


# similarity --------------------------------------------------------------------------------------------


def embed_explanations(cfg: PipelineConfig, hookpoint: str, name: str, embedder) -> pa.Table:
    """The parsed explanations of one partition embedded with the configured sentence-transformer."""
    lake = lake_for(cfg)
    explained = lake.files("explanations", hookpoint, name)
    if not explained:
        raise FileNotFoundError(f"no explanations for {hookpoint}|{name}: materialize `explanations` first")
    table = pq.read_table(explained[0], columns=["latent", "explanation", "parsed"]).filter(pc.field("parsed"))
    vectors = embedder.embed(table.column("explanation").to_pylist())
    flat = pa.array(vectors.reshape(-1), pa.float32())
    out = pa.table({"latent": table.column("latent"), "embedder": [embedder.name] * table.num_rows,
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    lake.write_partition(out, "explanation_embeddings", hookpoint, name)
    return out


def compare_variants(cfg: PipelineConfig) -> tuple[pa.Table, pa.Table, dict[str, str]]:
    """Every pair of partitions compared (see sae/compare.py); stored as `similarity` (matched pairs) and
    `similarity_summary`, with a heatmap and a similarity-vs-layer-distance plot (markdown; PNGs in lake/plots)."""
    import numpy as np

    from .compare import Side, compare_all, heatmap_matrix
    from .plots import markdown_image, similarity_heatmap, similarity_vs_distance

    lake = lake_for(cfg)
    sides = []
    for hookpoint in cfg.hookpoints:
        for name in cfg.sae_names:
            files = lake.files("explanation_embeddings", hookpoint, name)
            if not files:
                continue
            table = pq.read_table(files[0])
            latents = table.column("latent").to_numpy()
            embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)) if len(latents) else \
                np.zeros((0, 1), np.float32)
            decoder = None
            if not cfg.sae(name).neurons:
                decoder = load_stored_sae(cfg, hookpoint, name).W_dec.detach()[torch.as_tensor(latents)].numpy()
            sides.append(Side(hookpoint, name, latents, embeddings, decoder))
    if len(sides) < 2:
        raise FileNotFoundError("fewer than two partitions have explanation embeddings: materialize "
                                "`explanation_embeddings` for at least two layer x sae partitions first")
    pairs, summary = compare_all(sides, cfg.similarity, cfg.hookpoints)
    lake.write_partition(pairs, "similarity")
    lake.write_partition(summary, "similarity_summary")
    labels = [s.label for s in sides]
    heatmap = similarity_heatmap(labels, heatmap_matrix(sides, summary), title="mean best explanation cosine",
                                 path=lake.root / "plots" / "similarity_heatmap.png")
    points = [(r["layer_distance"], r["explanation_mean_best"], f"{r['sae_a']} vs {r['sae_b']}")
              for r in summary.to_pylist() if r["layer_distance"] is not None]
    distance = similarity_vs_distance(points, path=lake.root / "plots" / "similarity_vs_layer_distance.png")
    plots = {"heatmap": markdown_image(heatmap, "similarity heatmap"),
             "similarity_vs_layer_distance": markdown_image(distance, "similarity vs layer distance")}
    return pairs, summary, plots


# export ------------------------------------------------------------------------------------------------


def export(cfg: PipelineConfig, out_dir: Path, overwrite: bool = False) -> dict[str, int]:
    """The lake as a Hugging Face dataset folder (see sae/export.py); returns rows per configuration."""
    from .export import card_info_from_config, export_dataset

    lake = lake_for(cfg)
    versions = []
    for path in lake.files("explanations"):
        versions += pc.unique(pq.read_table(path, columns=["prompt_version"]).column(0)).to_pylist()
    tokenizer = load_tokenizer(cfg.model, lake.root)
    card = card_info_from_config(cfg, sorted(set(versions)))
    return export_dataset(lake.root, Path(out_dir), card, decode=tokenizer.batch_decode, overwrite=overwrite)

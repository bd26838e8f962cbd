"""The SAEs stage as plain functions over a config and a lake: variants trained or loaded, evaluated, stored,
and their spliced-in quality measured."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ..config import PRETRAINED_HOLDOUT_FRACTION, PipelineConfig, SaeSpec
from ..corpus.stage import count_contexts, load_context_tokens
from ..lake import lake_for
from ..lake.sql import run_query
from ..latents.hookpoints import hookpoint_width, source_hookpoint
from ..lineage import connect_fresh, fresh_files, lineage_of, require_fresh, sae_reads_activations
from ..models import load_model, load_tokenizer, model_source, resolve_device
from .codecs import Sae, detect_format, load_sae, save_sae
from .neurons import neuron_codec
from .quality import LayerBaseline, layer_baseline, spliced_loss
from .training import ReconstructionMetrics, evaluate, holdout_start, iter_activations, train_topk


@dataclass
class SaeResult:
    row: dict  # the partition's sae_metrics row
    metrics: ReconstructionMetrics | None
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
    files = fresh_files(cfg, "activations", hookpoint)
    n_contexts = count_contexts(cfg)
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


# The sae_metrics and sae_quality columns, typed, for a planted variant's row of NULLs (it has no reconstruction).
METRICS_SCHEMA = pa.schema([("architecture", pa.string()), ("num_latents", pa.int64()), ("k", pa.int64()),
                            ("d_in", pa.int64()), ("source", pa.string()), ("fvu", pa.float64()),
                            ("l0", pa.float64()), ("dead_fraction", pa.float64()), ("n_eval_tokens", pa.int64())])
QUALITY_SCHEMA = pa.schema([*(METRICS_SCHEMA.field(c) for c in ("architecture", "num_latents", "k", "fvu", "l0",
                                                                  "dead_fraction")),
                            *((c, pa.int64() if c == "n_ce_tokens" else pa.float64()) for c in (
                                "ce_clean", "ce_spliced", "ce_mean_ablated", "ce_increase",
                                "ce_increase_mean_ablated", "ce_recovered", "n_ce_tokens", "fvu_spliced"))])


def build_planted(cfg: PipelineConfig, hookpoint: str, name: str) -> SaeResult:
    """A planted variant: its definition (the families and the token ids each matches) stored instead of
    weights, and a sae_metrics row of NULLs beside it. Nothing is trained."""
    from .planted import ARCHITECTURE, DEFINITION_FILE, define_planted

    lake, key = lake_for(cfg), (hookpoint, name)
    planted = define_planted(cfg.sae(name).planted, load_tokenizer(cfg.model, lake.root), cfg.seed)
    row = {"architecture": ARCHITECTURE, "num_latents": planted.num_latents, "k": None, "d_in": None,
           "source": "planted", "fvu": None, "l0": None, "dead_fraction": None, "n_eval_tokens": 0}
    provenance = lineage_of(cfg).provenance("saes", key)
    lake.write_partition(pa.Table.from_pylist([row], schema=METRICS_SCHEMA), "sae_metrics", hookpoint, name,
                         provenance=provenance)
    staging = lake.open_staging("saes", hookpoint, name)
    planted.save(staging)
    return SaeResult(row, None, lake.commit(staging, "saes", hookpoint, name, provenance), DEFINITION_FILE)


def build_sae(cfg: PipelineConfig, hookpoint: str, name: str, progress: bool = True,
              trained: Sae | None = None) -> SaeResult:
    """Train (unless `trained` is given) or load one SAE variant of one layer, evaluate it, store it."""
    lake, lineage, key = lake_for(cfg), lineage_of(cfg), (hookpoint, name)
    spec = cfg.sae(name)
    if spec.planted is not None:
        return build_planted(cfg, hookpoint, name)
    device = resolve_device(cfg.model.device)
    hidden = width_at(cfg, hookpoint)
    activation_files = fresh_files(cfg, "activations", hookpoint) if sae_reads_activations(cfg, *key) else []
    folder = None
    holdout = spec.train.holdout_fraction if spec.train else PRETRAINED_HOLDOUT_FRACTION
    if spec.neurons is not None:
        sae = neuron_codec(width_at(cfg, reads_from(cfg, hookpoint, name)), spec.neurons.k).to(device)
    elif spec.train is not None:
        sae = trained if trained is not None else train_saes(cfg, hookpoint, [name], progress)[name]
    else:
        folder = pretrained_folder(spec, hookpoint)
        detect_format(folder)  # a clear error before any work
        sae = load_sae(folder, hookpoint).to(device)
        check_d_in(sae, hidden, f"SAE {name!r} at {folder}")
    metrics = None
    if activation_files and not sae.cfg.transcode:
        held_from = holdout_start(count_contexts(cfg), holdout)
        metrics = evaluate(sae, iter_activations(activation_files, 4096, held_from, heldout=True), device)
        everything = evaluate(sae, iter_activations(activation_files, 4096, None, heldout=False), device)
        metrics.dead_fraction = everything.dead_fraction
    row = {
        "architecture": sae.cfg.architecture, "num_latents": sae.num_latents, "k": sae.cfg.k or 0,
        "d_in": sae.cfg.d_in, "source": str(folder) if folder else ("neurons" if spec.neurons else "trained"),
        **(metrics.as_dict() if metrics else {"fvu": None, "l0": None, "dead_fraction": None, "n_eval_tokens": 0}),
    }
    # The metrics first, the SAE last: a crash in between leaves the SAE stale, never fresh with old metrics.
    provenance = lineage.provenance("saes", key)
    lake.write_partition(pa.Table.from_pylist([row]), "sae_metrics", hookpoint, name, provenance=provenance)
    staging = lake.open_staging("saes", hookpoint, name)
    written = save_sae(sae, staging)
    final = lake.commit(staging, "saes", hookpoint, name, provenance)
    return SaeResult(row, metrics, final, written)


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
    """The SAE the lake holds for the partition, refused if it was built from other settings."""
    require_fresh(cfg, "saes", (hookpoint, name))
    return load_sae(lake_for(cfg).partition("saes", hookpoint, name), hookpoint)


def load_planted(cfg: PipelineConfig, hookpoint: str, name: str):
    """The planted latents' definition the lake holds for the partition, refused if it is stale."""
    from .planted import PlantedLatents

    require_fresh(cfg, "saes", (hookpoint, name))
    return PlantedLatents.load(lake_for(cfg).partition("saes", hookpoint, name))


def num_latents_of(cfg: PipelineConfig, hookpoint: str, name: str) -> int:
    """The width of any variant (SAE, neurons, planted), from its stored sae_metrics row."""
    import duckdb

    with duckdb.connect() as con:
        files = [str(f) for f in fresh_files(cfg, "saes", (hookpoint, name), table="sae_metrics")]
        return int(run_query(con, "sae_metrics_of_partition", files=files).fetchall()[0][1])


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
        if cfg.sae(name).planted is not None:
            # No reconstruction to splice in: a row of NULLs, so that the partition exists and is fresh.
            row = {c: None for c in QUALITY_SCHEMA.names} | {"architecture": "planted",
                                                             "num_latents": num_latents_of(cfg, hookpoint, name)}
            lake.write_partition(pa.Table.from_pylist([row], schema=QUALITY_SCHEMA), "sae_quality", hookpoint, name,
                                 provenance=lineage_of(cfg).provenance("sae_quality", (hookpoint, name)))
            rows.append({"layer": hookpoint, "sae": name, **row})
            continue
        sae = load_stored_sae(cfg, hookpoint, name).to(device)
        # Neurons are spliced where they are read (the down projection's input); SAEs and transcoders
        # replace the activation at their hookpoint.
        point = reads_from(cfg, hookpoint, name) if cfg.sae(name).neurons else hookpoint
        if point not in baselines:
            baselines[point] = layer_baseline(model, held_out, point, cfg.batch_size)
        loss = spliced_loss(model, held_out, baselines[point], sae, cfg.batch_size)
        with duckdb.connect() as con:
            files = [str(f) for f in fresh_files(cfg, "saes", (hookpoint, name), table="sae_metrics")]
            architecture, num_latents, k, fvu, l0, dead = run_query(
                con, "sae_metrics_of_partition", files=files).fetchall()[0]
        row = {"architecture": architecture, "num_latents": num_latents, "k": k,
               "fvu": fvu if fvu is not None else loss.fvu, "l0": l0, "dead_fraction": dead, **loss.as_dict()}
        lake.write_partition(pa.Table.from_pylist([row]), "sae_quality", hookpoint, name,
                             provenance=lineage_of(cfg).provenance("sae_quality", (hookpoint, name)))
        rows.append({"layer": hookpoint, "sae": name, **row})
    return rows


def quality_summary(cfg: PipelineConfig) -> pa.Table:
    """Every variant of the config side by side (`sae_quality_summary`)."""
    with connect_fresh(cfg, "sae_quality", "latent_stats") as con:
        table = run_query(con, "quality_summary").to_arrow_table()
    lake_for(cfg).write_partition(table, "sae_quality_summary",
                                  provenance=lineage_of(cfg).provenance("sae_quality_summary"))
    return table


def write_latent_logits(cfg: PipelineConfig, partitions: list[tuple[str, str]]) -> dict[tuple[str, str], pa.Table]:
    """`latent_logits` of every (hookpoint, sae): each latent's most promoted and suppressed tokens (see
    sae/saes/logits.py); a variant without a decoder gets an empty partition. The model is loaded once."""
    from ..explanations.stage import token_decoder
    from .logits import SCHEMA, latent_logits

    lake = lake_for(cfg)
    with_decoder = [key for key in partitions if cfg.sae(key[1]).has_decoder]
    model = load_model(cfg.model, lake.root) if with_decoder else None
    decode = token_decoder(cfg)
    out = {}
    for hookpoint, name in partitions:
        table = SCHEMA.empty_table()
        if (hookpoint, name) in with_decoder:
            sae = load_stored_sae(cfg, hookpoint, name)
            # A transcoder writes the MLP's output (its hookpoint); anything else writes where it reads.
            space = hookpoint if sae.cfg.transcode else reads_from(cfg, hookpoint, name, sae)
            table = latent_logits(model, sae, space, cfg.explain.n_logit_tokens, decode)
        lake.write_partition(table, "latent_logits", hookpoint, name,
                             provenance=lineage_of(cfg).provenance("latent_logits", (hookpoint, name)))
        out[(hookpoint, name)] = table
    return out


def preview_logits(table: pa.Table, n: int = 5, k: int = 5) -> list[dict]:
    """The first latents' most promoted and suppressed tokens, for the asset's metadata."""
    return [{"latent": row["latent"], "promoted": " ".join(repr(t) for t in row["top_tokens"][:k]),
             "suppressed": " ".join(repr(t) for t in row["bottom_tokens"][:k])}
            for row in table.slice(0, n).to_pylist()]

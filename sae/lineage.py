"""Lineage: what made each partition of the lake, and whether it is still what the config asks for.

Every asset has a code version, a slice of the config, and inputs (other assets' partitions). A
partition's fingerprint hashes all three, its inputs' fingerprints included, so a changed setting
changes the fingerprint of everything downstream of it and of nothing upstream. Writers store the
fingerprint with the partition (`_provenance.json` beside its files, see sae/lake); readers, asset checks
and `saelake run` compare it with the fingerprint the current config gives.

Partition keys: None (unpartitioned), a hookpoint (per layer), or (hookpoint, sae) (per layer x sae).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import PRETRAINED_HOLDOUT_FRACTION, PipelineConfig
from .prompts import SCORERS as PROMPTED_SCORERS
from .prompts import (explainer_version, intervention_version, intruder_version, scorer_version, simulation_version,
                      surprisal_version)

if TYPE_CHECKING:
    from .lake import Lake

PartitionKey = str | tuple[str, str] | None
Inputs = list[tuple[str, PartitionKey]]


@dataclass(frozen=True)
class AssetLineage:
    name: str
    partitioning: str  # none | layer | layer_sae
    # Bump when the stage's code writes other rows from the same inputs: every partition goes stale.
    code_version: str
    settings: Callable[[PipelineConfig, PartitionKey], dict]
    inputs: Callable[[PipelineConfig, PartitionKey], Inputs]


def _asdict(value) -> dict:
    return dataclasses.asdict(value) if value is not None else None


def _min_holdout(cfg: PipelineConfig) -> float:
    return min([s.train.holdout_fraction for s in cfg.saes if s.train] or [PRETRAINED_HOLDOUT_FRACTION])


def _model_run(cfg: PipelineConfig) -> dict:
    """What shapes the forward pass's numbers: the dtype and the batches (not the device)."""
    return {"dtype": cfg.model.dtype, "batch_size": cfg.batch_size, "chunk_tokens": cfg.chunk_tokens}


def sae_reads_activations(cfg: PipelineConfig, hookpoint: str, name: str) -> bool:
    """Trained SAEs learn from the stored activations and pretrained ones are evaluated on them; neurons are
    read from the model itself."""
    return cfg.sae(name).neurons is None and cfg.writes_activations(hookpoint)


def _sae_inputs(cfg: PipelineConfig, key) -> Inputs:
    return [("activations", key[0]), ("contexts", None)] if sae_reads_activations(cfg, *key) else []


def _sae_settings(cfg: PipelineConfig, key) -> dict:
    hookpoint, name = key
    spec = cfg.sae(name)
    settings = {"hookpoint": hookpoint, "sae": _asdict(spec), "seed": cfg.seed,
                "model": {"name": cfg.model.name, "revision": cfg.model.revision}}
    if spec.path is not None:
        # A pretrained SAE on disk: a rewritten file under the same path is a new SAE.
        folder = spec.path_for(hookpoint)
        settings["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                   for p in Path(folder).glob("*") if p.is_file()) if folder.exists() else None
    return settings


def _per_partition(asset: str) -> Callable[[PipelineConfig, PartitionKey], Inputs]:
    return lambda cfg, key: [(asset, key)]


def _every_partition(*assets: str) -> Callable[[PipelineConfig, PartitionKey], Inputs]:
    return lambda cfg, key: [(a, p) for a in assets for p in layer_sae_keys(cfg)]


def _explain_settings(cfg: PipelineConfig, key) -> dict:
    explain = cfg.explain_for(key[1])
    return {"llm": explain.llm.identity(), "prompt": _asdict(explain.prompt),
            "prompt_version": explainer_version(explain.prompt), "latents": explain.latents,
            "n_latents": explain.n_latents, "latent_ids": list(explain.latent_ids),
            "n_examples": explain.n_examples, "max_tokens": explain.max_tokens,
            "temperature": explain.temperature, "max_attempts": explain.max_attempts,
            "token_baseline": explain.token_baseline, "seed": cfg.seed}


def _explain_inputs(cfg: PipelineConfig, key) -> Inputs:
    """The examples, and for the prompt's evidence every firing (latents, contexts) and the promoted tokens."""
    promoted = [("latent_logits", key)] if cfg.sae(key[1]).has_decoder else []
    return [("examples", key), ("latents", key), ("contexts", None), *promoted]


def _score_settings(cfg: PipelineConfig, key) -> dict:
    score = cfg.score_for(key[1])
    settings = {k: v for k, v in dataclasses.asdict(score).items() if k not in ("llm", "bootstrap")}
    settings["llm"] = (score.llm or cfg.explain.llm).identity()
    settings["prompt_versions"] = {s: scorer_version(s) for s in score.scorers if s in PROMPTED_SCORERS}
    for scorer, prompt_version in (("surprisal", surprisal_version), ("intruder", intruder_version),
                                   ("simulation", simulation_version), ("intervention", intervention_version)):
        if scorer in score.scorers:
            settings["prompt_versions"][scorer] = prompt_version()
    settings.update(n_quantiles=cfg.examples.n_quantiles, seed=cfg.seed,
                    highlight_threshold=cfg.explain.prompt.highlight_threshold)
    return settings


ASSETS: tuple[AssetLineage, ...] = (
    AssetLineage("contexts", "none", "1",
                 lambda cfg, key: {"model": {"name": cfg.model.name, "revision": cfg.model.revision},
                                   "corpus": _asdict(cfg.corpus), "n_tokens": cfg.n_tokens, "ctx_len": cfg.ctx_len},
                 lambda cfg, key: []),
    AssetLineage("activations", "layer", "1",
                 lambda cfg, key: {"hookpoint": key, **_model_run(cfg)},
                 lambda cfg, key: [("contexts", None)]),
    AssetLineage("saes", "layer_sae", "1", _sae_settings, _sae_inputs),
    AssetLineage("sae_quality", "layer_sae", "1",
                 lambda cfg, key: {"eval_contexts": cfg.eval_contexts, "min_holdout": _min_holdout(cfg),
                                   "batch_size": cfg.batch_size, "dtype": cfg.model.dtype},
                 lambda cfg, key: [("saes", key), ("contexts", None)]),
    AssetLineage("latents", "layer_sae", "1", lambda cfg, key: _model_run(cfg),
                 lambda cfg, key: [("saes", key), ("contexts", None)]),
    AssetLineage("latent_stats", "layer_sae", "2", lambda cfg, key: {}, _per_partition("latents")),
    AssetLineage("latent_logits", "layer_sae", "1",
                 lambda cfg, key: {"n_logit_tokens": cfg.explain.n_logit_tokens,
                                   "model": {"name": cfg.model.name, "revision": cfg.model.revision}},
                 lambda cfg, key: [("saes", key)] if cfg.sae(key[1]).has_decoder else []),
    AssetLineage("examples", "layer_sae", "2",
                 lambda cfg, key: {"examples": _asdict(cfg.examples), "seed": cfg.seed},
                 _per_partition("latents")),
    AssetLineage("explanations", "layer_sae", "2", _explain_settings, _explain_inputs),
    AssetLineage("scores", "layer_sae", "4", _score_settings, _per_partition("explanations")),
    AssetLineage("explanation_embeddings", "layer_sae", "1",
                 lambda cfg, key: {"embedder": cfg.score.embedder}, _per_partition("explanations")),
    AssetLineage("sae_quality_summary", "none", "1", lambda cfg, key: {},
                 _every_partition("sae_quality", "latent_stats")),
    AssetLineage("score_summary", "none", "2",
                 lambda cfg, key: {"bootstrap": cfg.score.bootstrap, "seed": cfg.seed}, _every_partition("scores")),
    AssetLineage("similarity", "none", "1",
                 lambda cfg, key: {"similarity": _asdict(cfg.similarity), "hookpoints": cfg.hookpoints},
                 _every_partition("explanation_embeddings")),
    AssetLineage("hf_export", "none", "2", lambda cfg, key: {},
                 lambda cfg, key: [("similarity", None), ("score_summary", None),
                                   *_every_partition("examples", "latent_stats", "latent_logits", "scores")(cfg, key)]),
)
BY_NAME = {asset.name: asset for asset in ASSETS}


def layer_sae_keys(cfg: PipelineConfig) -> list[tuple[str, str]]:
    return [(h, s) for h in cfg.hookpoints for s in cfg.sae_names]


def partition_keys(cfg: PipelineConfig, asset: str) -> list[PartitionKey]:
    """Every partition the config asks of `asset` (layers with `activations: false` have none)."""
    kind = BY_NAME[asset].partitioning
    if kind == "none":
        return [None]
    if kind == "layer":
        return [h for h in cfg.hookpoints if cfg.writes_activations(h)]
    return layer_sae_keys(cfg)


def label(asset: str, key: PartitionKey) -> str:
    """`latents[layers.3|topk-x4]`: how messages name a partition (Dagster's multi-partition key inside)."""
    return asset if key is None else f"{asset}[{partition_label(key)}]"


def partition_label(key: PartitionKey) -> str:
    return "|".join(key) if isinstance(key, tuple) else str(key)


@dataclass(frozen=True)
class Provenance:
    """What made one partition: stored beside it, and compared with the config's on every read."""

    asset: str
    partition: str | None
    fingerprint: str
    code_version: str
    settings: dict
    inputs: dict[str, str]  # input label -> its fingerprint

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        return cls(**json.loads(text))


class Lineage:
    """The fingerprints the config gives every partition, computed once per config."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self._memo: dict[tuple[str, PartitionKey], Provenance] = {}

    def provenance(self, asset: str, key: PartitionKey = None) -> Provenance:
        memo_key = (asset, key)
        if memo_key not in self._memo:
            spec = BY_NAME[asset]
            settings = json.loads(json.dumps(spec.settings(self.cfg, key), sort_keys=True, default=str))
            inputs = {label(a, k): self.provenance(a, k).fingerprint for a, k in spec.inputs(self.cfg, key)}
            payload = json.dumps([asset, spec.code_version, settings, inputs], sort_keys=True)
            self._memo[memo_key] = Provenance(
                asset, None if key is None else partition_label(key),
                hashlib.sha256(payload.encode()).hexdigest()[:16], spec.code_version, settings, inputs)
        return self._memo[memo_key]

    def fingerprint(self, asset: str, key: PartitionKey = None) -> str:
        return self.provenance(asset, key).fingerprint

    def every_partition(self) -> Iterator[tuple[str, PartitionKey]]:
        for spec in ASSETS:
            for key in partition_keys(self.cfg, spec.name):
                yield spec.name, key


def differences(stored: Provenance, expected: Provenance, limit: int | None = 4) -> list[str]:
    """Why a stored partition is not what the config asks for, in a few short phrases (every one if `limit` is
    None)."""
    reasons = []
    if stored.code_version != expected.code_version:
        reasons.append(f"code version {stored.code_version} -> {expected.code_version}")
    old, new = _flatten(stored.settings), _flatten(expected.settings)
    for path in sorted(set(old) | set(new)):
        if old.get(path) != new.get(path):
            reasons.append(f"{path}: {_short(old.get(path))} -> {_short(new.get(path))}")
    for name in sorted(set(stored.inputs) | set(expected.inputs)):
        if stored.inputs.get(name) != expected.inputs.get(name):
            reasons.append(f"input {name} changed")
    if limit is not None and len(reasons) > limit:
        reasons = reasons[:limit] + [f"and {len(reasons) - limit} more"]
    return reasons


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        flat = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat
    return {prefix: value}


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


class StaleDataError(RuntimeError):
    """An input partition is missing, was built from other settings than the current config, or failed a
    data check; the message names it and the command that refreshes it."""


@functools.cache
def lineage_of(cfg: PipelineConfig) -> Lineage:
    return Lineage(cfg)


def split_key(key: PartitionKey) -> tuple[str | None, str | None]:
    """(layer, sae) as the lake's folders take them."""
    if key is None:
        return None, None
    return (key, None) if isinstance(key, str) else key


def refresh_hint(asset: str, key: PartitionKey) -> str:
    where = "" if key is None else f" --partition '{partition_label(key)}'"
    return f"refresh it with `saelake run` (which redoes only what is missing or stale) or `saelake run --select " \
           f"{asset}{where}`"


@dataclass(frozen=True)
class PartitionState:
    """A partition as the lake holds it, against what the config asks for."""

    asset: str
    key: PartitionKey
    status: str  # fresh | missing | stale
    reasons: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return label(self.asset, self.key)


def partition_state(lake: Lake, lineage: Lineage, asset: str, key: PartitionKey) -> PartitionState:
    expected = lineage.provenance(asset, key)
    stored = lake.stored_provenance(asset, *split_key(key))
    if stored is None:
        return PartitionState(asset, key, "missing")
    if stored.fingerprint == expected.fingerprint:
        return PartitionState(asset, key, "fresh")
    return PartitionState(asset, key, "stale", tuple(stale_reasons(lake, lineage, stored, expected)))


def stale_reasons(lake: Lake, lineage: Lineage, stored: Provenance, expected: Provenance,
                  limit: int = 4) -> list[str]:
    """Why a partition is stale, as its root causes: a setting of its own that changed, or the setting of the
    upstream partition where the change happened (`saes[layers.3|topk-x4]: sae.train.k: 32 -> 16`)."""
    causes = list(dict.fromkeys(_root_causes(lake, lineage, stored, expected)))
    return causes[:limit] + ([f"and {len(causes) - limit} more"] if len(causes) > limit else [])


def _root_causes(lake: Lake, lineage: Lineage, stored: Provenance, expected: Provenance,
                 where: str = "") -> Iterator[str]:
    prefix = f"{where}: " if where else ""
    for reason in differences(stored, expected, limit=None):
        if not reason.startswith("input "):
            yield prefix + reason
    for name, fingerprint in expected.inputs.items():
        if stored.inputs.get(name) == fingerprint:
            continue
        asset, key = parse_label(name)
        upstream = lake.stored_provenance(asset, *split_key(key))
        if upstream is None:
            yield f"{name} is missing"
        elif upstream.fingerprint == fingerprint:
            yield f"{name} was rebuilt since"
        else:
            yield from _root_causes(lake, lineage, upstream, lineage.provenance(asset, key), name)


def parse_label(text: str) -> tuple[str, PartitionKey]:
    if "[" not in text:
        return text, None
    asset, inner = text[:-1].split("[", 1)
    return asset, tuple(inner.split("|")) if "|" in inner else inner


def require_fresh(cfg: PipelineConfig, asset: str, key: PartitionKey = None) -> Provenance:
    """Refuse to read a partition that is missing, stale, or failed a blocking data check."""
    from .checks import failed_blocking_checks
    from .lake import lake_for

    lake, lineage = lake_for(cfg), lineage_of(cfg)
    state = partition_state(lake, lineage, asset, key)
    name = f"`{asset}`" + ("" if key is None else f" for {partition_label(key)}")
    if state.status == "missing":
        raise StaleDataError(f"{name} is missing from the lake {lake}: {refresh_hint(asset, key)}")
    if state.status == "stale":
        raise StaleDataError(f"{name} is stale ({'; '.join(state.reasons)}): {refresh_hint(asset, key)}")
    provenance = lineage.provenance(asset, key)
    failed = failed_blocking_checks(lake, asset, key, provenance.fingerprint)
    if failed:
        where = "" if key is None else f" --partition '{partition_label(key)}'"
        raise StaleDataError(f"{name} failed its data check {failed[0]}: fix the cause and rebuild it "
                             f"(`saelake run --force --select {asset}{where}`)")
    return provenance


def fresh_files(cfg: PipelineConfig, asset: str, key: PartitionKey = None, table: str | None = None) -> list[Path]:
    """The Parquet files of a fresh partition (of `table`, a second table the same asset writes)."""
    from .lake import lake_for

    expected = require_fresh(cfg, asset, key)
    lake = lake_for(cfg)
    if table not in (None, asset):
        stored = lake.stored_provenance(table, *split_key(key))
        if stored is None or stored.fingerprint != expected.fingerprint:
            raise StaleDataError(f"`{table}` for {partition_label(key)} is not the one `{asset}` wrote with its "
                                 f"current settings: {refresh_hint(asset, key)}")
    return lake.files(table or asset, *split_key(key))


def plan(cfg: PipelineConfig, lake: Lake, select: Sequence[str] = (), partitions: Sequence[str] = (),
         force: bool = False) -> list[PartitionState]:
    """Every partition of the selected assets, in the order they must be built, with its state. `select`
    holds asset names (`name+` adds everything downstream); `partitions` holds partition labels, layers or SAE
    names (a partition matches if its label or one of its parts is listed); `force` marks all as stale."""
    lineage = lineage_of(cfg)
    chosen = select_assets(select)
    states = []
    for asset in chosen:
        for key in partition_keys(cfg, asset):
            if partitions and not _matches(key, partitions):
                continue
            state = partition_state(lake, lineage, asset, key)
            if force and state.status == "fresh":
                state = PartitionState(asset, key, "stale", ("--force",))
            states.append(state)
    return states


def select_assets(select: Sequence[str]) -> list[str]:
    if not select:
        return [a.name for a in ASSETS]
    unknown = [s for s in select if s.rstrip("+") not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown asset {unknown[0]!r} in --select; assets: {', '.join(BY_NAME)}")
    chosen = {s.rstrip("+") for s in select}
    for s in select:
        if s.endswith("+"):
            chosen |= downstream_of(s.rstrip("+"))
    return [a.name for a in ASSETS if a.name in chosen]


@functools.cache
def _edges() -> dict[str, set[str]]:
    """Asset -> the assets that read it (from a config with one layer and one SAE of each kind)."""
    from .config import LayerConfig, NeuronsConfig, SaeSpec, TrainConfig

    probe = PipelineConfig(layers=(LayerConfig("layers.0"),),
                           saes=(SaeSpec("t", train=TrainConfig()), SaeSpec("n", neurons=NeuronsConfig())))
    children: dict[str, set[str]] = {a.name: set() for a in ASSETS}
    for spec in ASSETS:
        for key in partition_keys(probe, spec.name):
            for upstream, _ in spec.inputs(probe, key):
                children[upstream].add(spec.name)
    return children


def downstream_of(asset: str) -> set[str]:
    found, todo = set(), [asset]
    while todo:
        for child in _edges()[todo.pop()]:
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def upstream_assets(asset: str) -> list[str]:
    """The assets `asset` reads directly, for the Dagster graph."""
    return sorted(a for a, children in _edges().items() if asset in children)


def _matches(key: PartitionKey, wanted: Sequence[str]) -> bool:
    if key is None:
        return True
    parts = (key,) if isinstance(key, str) else key
    return partition_label(key) in wanted or any(p in wanted for p in parts)


# Tables written by an asset of another name, beside its own.
TABLE_OWNERS = {"sae_metrics": "saes", "example_coverage": "examples", "similarity_summary": "similarity",
                "scorer_calibration": "score_summary", "steered_generations": "scores",
                "output_explanations": "scores"}


def fresh_table_files(cfg: PipelineConfig, table: str) -> list[Path]:
    """The files of `table` across every partition the config asks for, each partition checked first."""
    asset = TABLE_OWNERS.get(table, table)
    return [f for key in partition_keys(cfg, asset) for f in fresh_files(cfg, asset, key, table=table)]


def connect_fresh(cfg: PipelineConfig, *tables: str):
    """An in-memory DuckDB connection with a view per table over the fresh partitions of the config: summaries
    never mix in a partition made with other settings, and never take the lock of the lake's database file,
    which a user's notebook may hold."""
    import duckdb

    con = duckdb.connect()
    for table in tables:
        files = [str(f) for f in fresh_table_files(cfg, table)]
        partitioned = BY_NAME[TABLE_OWNERS.get(table, table)].partitioning != "none"
        if not files:
            raise StaleDataError(f"`{table}` has no files in the lake: {refresh_hint(table, None)}")
        con.read_parquet(files, hive_partitioning=partitioned, union_by_name=True).create_view(table)
    return con

"""Export the lake as a Hugging Face dataset folder (one configuration per table) and push it to the Hub.

Layout of the export:
  README.md                                    (dataset card: YAML header with the configurations, then prose)
  data/<config>/train-00000-of-00001.parquet   (one file per configuration, split "train")
  .saelake-export                              (marker: the folder may be replaced by a later export)

Configurations: `explanations` (the default; one row per layer, sae, latent and explainer, with the scores
pivoted in), `examples`, `latent_stats`, `latent_logits`, `scores` (with each scorer's `calibrated`),
`score_summary`, `scorer_calibration`, `similarity`, `similarity_summary`, each written only where the lake has
that table. The partitioned tables get `layer` and `sae` as real columns.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..config import SCORERS, PipelineConfig, SaeSpec
from ..lake import PARQUET_OPTIONS, PROVENANCE_FILE, UNPARTITIONED, Lake, replace_folder
from ..lake.sql import run_query
from ..scoring.metrics import PRIMARY_METRIC, versus_baseline

log = logging.getLogger(__name__)

CONFIGS = ("explanations", "examples", "latent_stats", "latent_logits", "scores", "score_summary",
           "scorer_calibration", "similarity", "similarity_summary")
DEFAULT_CONFIG = "explanations"
SPLIT = "train"
DATA_FILE = f"{SPLIT}-00000-of-00001.parquet"
MARKER = ".saelake-export"
DEFAULT_LICENSE = "cc-by-sa-4.0"  # the default corpus is Wikipedia, whose text is CC BY-SA
TAGS = ["interpretability", "sparse-autoencoders", "mechanistic-interpretability", "saelake"]
BATCH_ROWS = 65_536  # rows per Arrow batch from DuckDB and per Parquet row group: bounded writer memory
KNOWN_SCORERS = SCORERS

# Columns of the explanations configuration, in order, before the pivoted scores.
EXPLANATION_COLUMNS = {
    "layer": "hookpoint the SAE reads (e.g. `layers.3`)",
    "sae": "name of the SAE variant (see *SAEs* above)",
    "latent": "latent index within the SAE",
    "explainer": "who wrote the explanation: `llm` (the explainer model, from the windows the latent fires on), "
                 "`llm-output` (the scorer model, from what steering with the latent makes the model write; scored "
                 "by the intervention scorer only), `tokens` (the LLM-free token baseline) or `truth` (a planted "
                 "latent's ground truth)",
    "explanation": "the explanation; null where the LLM's answer had no `Explanation:` line",
    "parsed": "whether an explanation could be read from the answer",
    "completion": "the LLM's raw answer, always kept",
    "explainer_model": "the LLM that wrote the explanation (`tokens` / `planted` for the other explainers)",
    "backend": "how the LLM was run (local, openai or vllm; `tokens` / `planted` for the other explainers)",
    "copied_example": "the worked example's answer the LLM copied (null when none); for `llm-output`, also a "
                      "continuation it was shown and repeated",
    "attempts": "answers asked of the LLM for this latent (more than one where a copy was retried)",
    "prompt_version": "hash of the explainer prompt (its text and options)",
    "prompt_tokens": "tokens in the explainer prompt",
    "completion_tokens": "tokens the LLM generated",
}
DESCRIPTIONS = {
    "explanations": "one row per explained latent and explainer: the explanation and its scores (real and control)",
    "examples": "the example windows per latent: train (shown to the explainer) and test (for scoring)",
    "latent_stats": "per latent: firing count and frequency, activation maximum, mean and deciles, dead flag",
    "latent_logits": "per latent: the tokens its decoder direction promotes and suppresses most (through the final "
                     "norm's weight and the unembedding), with their logits",
    "scores": "one row per latent, explainer, scorer and source (real or control) with every metric, and whether "
              "the scorer is `calibrated`",
    "score_summary": "per layer, SAE, explainer, scorer and source: mean scores with bootstrap 95% intervals, "
                     "`planted` variants marked, and whether the scorer is `calibrated`",
    "scorer_calibration": "per scorer and scorer model: its score with the true, the explainer's, the baseline's "
                          "and a wrong explanation on the planted latents (95% intervals), and the verdict",
    "similarity": "matched latent pairs between every two (layer, SAE) partitions",
    "similarity_summary": "per pair of partitions: mean best cosine, one-to-one matching, agreement",
}


@dataclass
class CardInfo:
    """What the dataset card says about how the data was made."""

    model: str
    corpus: str
    n_tokens: int
    ctx_len: int
    layers: list[str]
    saes: list[tuple[str, str]]  # (name, short description)
    explainer: str  # backend:model
    prompt_versions: list[str]
    scorers: list[str]
    license: str = DEFAULT_LICENSE
    pretty_name: str = "saelake explanations"
    repo_id: str | None = None
    tags: list[str] = field(default_factory=lambda: list(TAGS))


def describe_sae(spec: SaeSpec) -> str:
    if spec.planted is not None:
        names = ", ".join(f.name for f in spec.planted.families)
        return (f"planted: known-answer latents, one per word family ({names}), firing where the corpus has those "
                "words, each with its ground-truth explanation; they calibrate the scorers and are no SAE")
    if spec.neurons is not None:
        top = f", kept to the top {spec.neurons.k} per token" if spec.neurons.k is not None else ""
        return f"baseline: the MLP's own neurons (input of the down projection), positive values{top}"
    if spec.train is not None:
        return (f"TopK SAE trained on the layer's cached activations: expansion factor "
                f"{spec.train.expansion_factor}, k = {spec.train.k}")
    if spec.hub is not None:
        where = f"Hub repo `{spec.hub}`"
        if spec.subfolder.strip("/"):
            where += f", subfolder `{spec.subfolder}`"
        if spec.revision:
            where += f" @ `{spec.revision}`"
        return f"pretrained SAE from the {where}"
    return f"pretrained SAE from `{spec.path}`"


def describe_corpus(cfg: PipelineConfig) -> str:
    corpus = cfg.corpus
    if corpus.source == "huggingface":
        subset = f" ({corpus.subset})" if corpus.subset else ""
        return f"Hugging Face dataset `{corpus.dataset}`{subset}, split `{corpus.split}`"
    if corpus.source == "files":
        return "local text files: " + ", ".join(f"`{Path(p).name}`" for p in corpus.paths)
    return f"`{corpus.source}` (a Wikipedia sample, shipped with gensim)"


def card_info_from_config(cfg: PipelineConfig, prompt_versions: list[str]) -> CardInfo:
    llm = cfg.explain.llm
    model = cfg.model.name + (f"@{cfg.model.revision}" if cfg.model.revision else "")
    return CardInfo(model=model, corpus=describe_corpus(cfg), n_tokens=cfg.n_tokens, ctx_len=cfg.ctx_len,
                    layers=list(cfg.hookpoints), saes=[(s.name, describe_sae(s)) for s in cfg.saes],
                    explainer=f"{llm.backend}:{llm.model}", prompt_versions=list(prompt_versions),
                    scorers=list(cfg.score.scorers))


# export ------------------------------------------------------------------------------------------------


def export_dataset(lake_root: Path, out_dir: Path, card: CardInfo,
                   decode: Callable[[list[list[int]]], list[str]] | None = None, overwrite: bool = False,
                   files: Callable[[str], list[Path]] | None = None) -> dict[str, int]:
    """Write every table of the lake that exists as a configuration of a Hugging Face dataset folder.

    `decode` (windows of token ids -> their texts, one call per batch of rows) adds a `text` column to
    `examples`. A table without rows is left out (`datasets` cannot load an empty configuration). The folder is
    built beside `out_dir` and moved into place when complete. `files` gives the files of a table to export
    (default: every file of the lake's table). Returns the row count of each configuration written.
    """
    lake = Lake(lake_root)
    files = files or lake.files
    out_dir = Path(out_dir).resolve()
    if not files("explanations"):
        raise FileNotFoundError(f"no explanations in the lake at {lake.root}: run the pipeline (at least the "
                                "`explanations` asset) before exporting")
    if out_dir == lake.root or out_dir in lake.root.parents:
        raise ValueError(f"{out_dir} holds the lake at {lake.root}; export to a folder outside it")
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = out_dir.parent / f".{out_dir.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        counts = _write_configs(lake, files, build, decode)
        if DEFAULT_CONFIG not in counts:
            raise ValueError(f"the explanations in the lake at {lake.root} have no rows: nothing to export")
        scored = _scored(build)
        (build / "README.md").write_text(dataset_card(card, counts, _summary_rows(build), scored,
                                                      text=decode is not None,
                                                      calibration=_exported(build, "scorer_calibration")))
        (build / MARKER).write_text(json.dumps({"configs": counts}, indent=1) + "\n")
        replace_folder(build, out_dir, out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    log.info("exported %s to %s", ", ".join(f"{c} ({n} rows)" for c, n in counts.items()), out_dir)
    return counts


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if overwrite or (out_dir / MARKER).exists() or not any(out_dir.iterdir()):
        return
    raise FileExistsError(f"{out_dir} is not empty and is not an earlier saelake export (it has no {MARKER} "
                          "file): export to another folder, or pass overwrite=True to replace it")


def _write_configs(lake: Lake, files: Callable[[str], list[Path]], build: Path,
                   decode: Callable[[list[list[int]]], list[str]] | None) -> dict[str, int]:
    counts = {}
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")  # timestamps keep the lake's UTC zone in Arrow
        for config in CONFIGS:
            if not files(config):
                continue
            if config == "explanations":
                relation = _explanations(con, lake, files)
            elif config == "scores":
                relation = _scores(con, lake, files)
            else:
                relation = _table(con, lake, config, files(config))
            transform = _with_text(decode) if config == "examples" and decode is not None else None
            folder = build / "data" / config
            folder.mkdir(parents=True)
            rows = _write_parquet(relation.to_arrow_reader(BATCH_ROWS), folder / DATA_FILE, transform)
            if rows:
                counts[config] = rows
            else:
                # `datasets` refuses a configuration without rows, so an empty table is left out.
                log.warning("the lake's %s table has no rows; not exported", config)
                shutil.rmtree(folder)
    return counts


def _names(paths: list[Path]) -> list[str]:
    return [str(f) for f in paths]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(con: duckdb.DuckDBPyConnection, lake: Lake, table: str, paths: list[Path]) -> duckdb.DuckDBPyRelation:
    """Every file of `table`, with `layer` and `sae` first for the partitioned tables."""
    partitioned = table not in UNPARTITIONED
    relation = run_query(con, "export_table", files=_names(paths), partitioned=partitioned)
    if not partitioned:
        return relation
    # DuckDB reads key=value folders anywhere in the path as columns; keep only the lake's own two.
    ancestors = {part.split("=", 1)[0] for part in lake.root.parts if "=" in part}
    rest = [c for c in relation.columns if c not in {"layer", "sae", *ancestors}]
    return relation.project(", ".join(_quote(c) for c in ["layer", "sae", *rest]))


def score_columns(scorer: str) -> dict[str, tuple[str, str]]:
    """The pivoted columns of one scorer: name -> (source, metric). A scorer whose primary metric is neither
    balanced accuracy nor AUC (intruder, simulation, intervention) is pivoted by that metric alone."""
    metric = PRIMARY_METRIC.get(scorer)
    if metric not in (None, "balanced_accuracy", "auc"):
        return {f"{scorer}_{metric}": ("real", metric), f"{scorer}_control_{metric}": ("control", metric)}
    return {f"{scorer}_balanced_accuracy": ("real", "balanced_accuracy"), f"{scorer}_f1": ("real", "f1"),
            f"{scorer}_auc": ("real", "auc"),
            f"{scorer}_control_balanced_accuracy": ("control", "balanced_accuracy"),
            f"{scorer}_control_auc": ("control", "auc")}


def _explanations(con: duckdb.DuckDBPyConnection, lake: Lake,
                  files: Callable[[str], list[Path]]) -> duckdb.DuckDBPyRelation:
    """One row per explained latent and explainer, its scores pivoted into columns (sql/export_explanations.sql),
    the columns in the card's order: the explanation's, then per scorer (known ones first) real and control."""
    # The intervention scorer's output-side explanations (explainer llm-output) are explanations too.
    _table(con, lake, "explanations", files("explanations") + files("output_explanations")).project(
        ", ".join(_quote(c) for c in EXPLANATION_COLUMNS)).create("explanation_rows")
    if not files("scores"):
        return con.table("explanation_rows").order("layer, sae, latent, explainer")
    run_query(con, "export_score_values", files=_names(files("scores")))
    relation = run_query(con, "export_explanations")
    scorers = {c.rsplit("_control_", 1)[0] for c in relation.columns if "_control_" in c}
    order = sorted(scorers, key=lambda s: (KNOWN_SCORERS.index(s) if s in KNOWN_SCORERS else len(KNOWN_SCORERS), s))
    pivoted = [c for scorer in order for c in score_columns(scorer) if c in relation.columns]
    return relation.project(", ".join(_quote(c) for c in [*EXPLANATION_COLUMNS, *pivoted]))


def _scores(con: duckdb.DuckDBPyConnection, lake: Lake, files: Callable[[str], list[Path]]) -> duckdb.DuckDBPyRelation:
    """Every score row with its scorer's calibration verdict (null where there is none; sql/export_scores.sql)."""
    from ..scoring.calibration import SCHEMA as CALIBRATION_SCHEMA

    _table(con, lake, "scores", files("scores")).create_view("score_rows")
    calibration = files("scorer_calibration")
    con.register("calibration",
                 pq.read_table(_names(calibration)[0]) if calibration else CALIBRATION_SCHEMA.empty_table())
    return run_query(con, "export_scores")


def _with_text(decode: Callable[[list[list[int]]], list[str]]) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    def add(batch: pa.RecordBatch) -> pa.RecordBatch:
        windows = batch.column("tokens").to_pylist()
        decoded = iter(decode([ids for ids in windows if ids is not None]))  # one call per batch: fast tokenizers
        texts = [None if ids is None else next(decoded) for ids in windows]
        return pa.RecordBatch.from_arrays([*batch.columns, pa.array(texts, pa.string())],
                                          names=[*batch.schema.names, "text"])

    return add


def _write_parquet(reader: pa.RecordBatchReader, path: Path,
                   transform: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None) -> int:
    """Stream the batches of `reader` into one Parquet file; returns the number of rows."""
    schema = reader.schema
    if transform is not None:
        schema = transform(pa.RecordBatch.from_pylist([], schema=schema)).schema
    rows = 0
    with pq.ParquetWriter(path, schema, **PARQUET_OPTIONS) as writer:
        for batch in reader:
            if transform is not None:
                batch = transform(batch)
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _scored(build: Path) -> list[str]:
    """The scorers whose columns the exported explanations have, in column order."""
    names = pq.read_schema(build / "data" / "explanations" / DATA_FILE).names
    return [n.removesuffix("_control_auc") for n in names if n.endswith("_control_auc")]


def _summary_rows(build: Path) -> pl.DataFrame | None:
    return _exported(build, "score_summary")


def _exported(build: Path, config: str) -> pl.DataFrame | None:
    path = build / "data" / config / DATA_FILE
    return pl.read_parquet(path) if path.exists() else None


# dataset card ------------------------------------------------------------------------------------------


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return label
    return "100M<n<1B"


def card_header(card: CardInfo, counts: dict[str, int]) -> dict:
    configs = []
    for config in counts:
        entry = {"config_name": config, "data_files": [{"split": SPLIT, "path": f"data/{config}/*.parquet"}]}
        if config == DEFAULT_CONFIG:
            entry["default"] = True
        configs.append(entry)
    return {"license": card.license, "pretty_name": card.pretty_name, "tags": list(card.tags),
            "size_categories": [size_category(counts.get(DEFAULT_CONFIG, 0))], "configs": configs}


def _cell(value) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _interval(row: dict | None, metric: str) -> str:
    if row is None or row.get(metric) is None or math.isnan(row[metric]):
        return "–"
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{row[metric]:.3f}"
    return f"{row[metric]:.3f} [{lo:.3f}, {hi:.3f}]"


def _rank(column: str, order: list[str]) -> pl.Expr:
    """The position of each value in `order`; values not in it come after, in their own order."""
    return pl.col(column).replace_strict({v: i for i, v in enumerate(order)}, default=len(order),
                                         return_dtype=pl.Int64)


def summary_table(summary: pl.DataFrame, card: CardInfo) -> list[str]:
    """Markdown lines: per layer, SAE, scorer and explainer, the real mean beside the control mean (95%
    intervals), in the card's order of layers and SAEs."""
    layers, saes = list(card.layers), [name for name, _ in card.saes]
    ordered = summary.sort([_rank("layer", layers), "layer", _rank("sae", saes), "sae", "scorer", "explainer"],
                           maintain_order=True)
    lines = ["| layer | sae | scorer | explainer | metric | latents | real | control | LLM minus token baseline |",
             "|---|---|---|---|---|---:|---|---|---|"]
    for (layer, sae, scorer, explainer), group in ordered.partition_by(
            ["layer", "sae", "scorer", "explainer"], as_dict=True).items():
        by_source = {row["source"]: row for row in group.to_dicts()}
        metric = PRIMARY_METRIC[scorer]  # the metric the summary's LLM-minus-baseline column is computed on
        real, control = by_source.get("real"), by_source.get("control")
        latents = (real or control or {}).get("n_latents", "")
        lines.append(f"| {_cell(layer)} | {_cell(sae)} | {_cell(scorer)} | {_cell(explainer)} | {metric} | "
                     f"{latents} | {_interval(real, metric)} | {_interval(control, metric)} | "
                     f"{versus_baseline(real or {})} |")
    return lines


INTRO = (
    "Natural-language explanations of the latents of sparse autoencoders (SAEs) on a language model, with scores "
    "that say how well each explanation predicts where its latent fires. Produced by the saelake pipeline: the "
    "model reads a corpus, SAEs encode its activations at each layer, an LLM explains each latent from its "
    "strongest and quantile-sampled activating windows, and the explanations are scored on held-out windows the "
    "explainer never saw. Every latent is also scored with another latent's explanation (the *control*), which "
    "shows what a score is worth when the explanation is unrelated."
)
SUMMARY_NOTE = (
    "Mean per-latent score with a bootstrap 95% interval, for the latent's own explanation (real) and for another "
    "latent's by the same explainer (control). Balanced accuracy for detection and fuzzing, ROC AUC for the "
    "embedding and surprisal scorers, which rank windows; chance is 0.5 for both. The intruder (explainer `none`: "
    "it reads no explanation; its control shows no intruder) and intervention score by accuracy, chance 1 / (k + 1) "
    "and 0.5; simulation by the correlation of predicted and true activations, chance 0. The explainer `tokens` is "
    "the LLM-free token baseline (the latent's commonest activating tokens); on the LLM's rows, the last column is the LLM's score minus the baseline's on the same "
    "latents, with its 95% interval: the LLM earns its cost only where that interval lies above 0."
)
CALIBRATION_NOTE = (
    "Each scorer was also run on planted latents, whose true explanation is known: a scorer is *calibrated* only "
    "where its score with the true explanation lies wholly above its score with a wrong one (another planted "
    "latent's), 95% intervals apart. Read the scores of an UNCALIBRATED or unchecked scorer as not meaningful. "
    "Intervention steers with the decoder, which planted latents lack: it is *not applicable* there."
)
SPLIT_NOTE = "Each configuration has one split, `train`; the partitioned tables carry `layer` and `sae` columns."
NULL_NOTE = "Score columns are null where a latent was not scored (e.g. its explanation could not be parsed)."


def calibration_section(calibration: pl.DataFrame | None) -> list[str]:
    """Markdown lines: per scorer, whether it was calibrated on the planted latents, and the figures."""
    from ..scoring.calibration import CATEGORIES, calibration_line, calibration_rows

    lines = ["## Scorer calibration", "", CALIBRATION_NOTE, ""]
    if calibration is None or calibration.is_empty():
        return lines + ["No scorer was calibrated: the lake had no scores on planted latents when this dataset was "
                        "exported, so no score here is shown to mean anything.", ""]
    rows = calibration.to_arrow()
    names = [name for name, _, _ in CATEGORIES]
    lines += [f"- {_cell(line)}" for line in map(calibration_line, rows.to_pylist())]
    lines += ["", "| scorer | scorer model | metric | planted latents | " + " | ".join(names) + " | verdict |",
              "|---|---|---|---:|" + "---|" * len(names) + "---|"]
    for row in calibration_rows(rows):
        cells = [row["scorer"], row["scorer_model"], row["metric"], row["planted_latents"],
                 *(row[name] for name in names), row["verdict"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def dataset_card(card: CardInfo, counts: dict[str, int], summary: pl.DataFrame | None, scored: list[str],
                 text: bool = False, calibration: pl.DataFrame | None = None) -> str:
    """The README: YAML header (license, tags, configurations), then what the data is and how it was made."""
    header = yaml.safe_dump(card_header(card, counts), sort_keys=False, allow_unicode=True).rstrip("\n")
    repo = card.repo_id or "path/to/this/folder"
    versions = ", ".join(f"`{v}`" for v in card.prompt_versions) or "–"
    lines = ["---", header, "---", "", f"# {card.pretty_name}", "", INTRO, "", "## How it was made", "",
             f"- **Subject model:** `{card.model}`",
             f"- **Corpus:** {card.corpus}",
             f"- **Tokens:** {card.n_tokens:,} in contexts of {card.ctx_len} tokens",
             f"- **Layers:** {', '.join(f'`{layer}`' for layer in card.layers)}",
             f"- **Explainer:** `{card.explainer}`",
             f"- **Explainer prompt version(s):** {versions}",
             f"- **Scorers:** {', '.join(card.scorers) or '–'}", "",
             "### SAEs", ""]
    lines += [f"- `{name}`: {description}" for name, description in card.saes]
    lines += ["", *calibration_section(calibration), "## Scores", ""]
    if summary is not None and not summary.is_empty():
        lines += [SUMMARY_NOTE, "", *summary_table(summary, card), ""]
    else:
        lines += ["The lake had no score summary when this dataset was exported.", ""]
    lines += ["## Configurations", "", "| configuration | rows | contents |", "|---|---:|---|"]
    for config, n in counts.items():
        default = " (default)" if config == DEFAULT_CONFIG else ""
        lines.append(f"| `{config}`{default} | {n:,} | {DESCRIPTIONS[config]} |")
    lines += ["", SPLIT_NOTE, "", "## Loading", "", "```python", "import datasets", "",
              f'explanations = datasets.load_dataset("{repo}", "explanations", split="train")',
              f'examples = datasets.load_dataset("{repo}", "examples", split="train")', "```", "",
              "## Columns of `explanations`", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{column}` | {meaning} |" for column, meaning in EXPLANATION_COLUMNS.items()]
    for scorer in scored:
        real, control = [", ".join(f"`{c}`" for c, (source, _) in score_columns(scorer).items() if source == kind)
                         for kind in ("real", "control")]
        lines.append(f"| {real} | {scorer} scores with the latent's own explanation "
                     "(AUC null where the scorer gave no probabilities) |")
        lines.append(f"| {control} | {scorer} scores with another latent's explanation (the control) |")
    window = ", `text` the decoded window." if text else "."
    lines += ["", NULL_NOTE + " In `examples`, `tokens` are the window's token ids (the subject model's "
              f"tokenizer), `acts` the latent's activation at each token{window}", ""]
    return "\n".join(lines)


# push --------------------------------------------------------------------------------------------------


class MissingTokenError(RuntimeError):
    """No Hugging Face token was given, set in HF_TOKEN, or stored by a login."""


def resolve_token(token: str | None = None) -> str:
    """The token to push with: `token`, else $HF_TOKEN, else the one stored by `hf auth login`."""
    for candidate in (token, os.environ.get("HF_TOKEN")):
        if candidate and candidate.strip():
            return candidate.strip()
    import huggingface_hub

    stored = huggingface_hub.get_token()
    if stored and stored.strip():
        return stored.strip()
    raise MissingTokenError("no Hugging Face token: set the HF_TOKEN environment variable or run "
                            "`hf auth login`, then push again")


def push_dataset(out_dir: Path, repo_id: str, token: str | None = None, private: bool = False, api=None) -> str:
    """Upload an export folder to a Hub dataset repo (created if missing); returns the dataset's URL.

    The token is never printed or logged, and is scrubbed from the messages of errors raised by the Hub calls."""
    token = resolve_token(token)
    out_dir = Path(out_dir)
    if not (out_dir / "README.md").exists() or not (out_dir / MARKER).exists():
        raise FileNotFoundError(f"{out_dir} is not a saelake export: run the export first")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    log.info("pushing %s to the Hub dataset %s", out_dir, repo_id)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private, token=token)
        api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset",
                          commit_message="Upload saelake explanations dataset",
                          ignore_patterns=[MARKER, PROVENANCE_FILE],
                          token=token)
    except Exception as err:
        if _mentions(err, token):
            raise RuntimeError(f"pushing to {repo_id} failed: " + str(err).replace(token, "***")) from None
        raise
    endpoint = getattr(api, "endpoint", None) or "https://huggingface.co"
    return f"{endpoint.rstrip('/')}/datasets/{repo_id}"


def _mentions(err: BaseException, secret: str) -> bool:
    """Whether `secret` appears in the message of `err` or of any exception chained to it."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if secret in str(err) or secret in repr(err.args):
            return True
        err = err.__cause__ or err.__context__
    return False

"""The scoring stage as plain functions over a config and a lake: explanations scored, summarised and plotted."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq

from ..checks import WARN, CheckOutcome, CheckSpec, record_checks
from ..config import PipelineConfig
from ..explanations.stage import token_decoder
from ..lake import lake_for
from ..lake.sql import run_query
from ..lineage import connect_fresh, fresh_files, lineage_of


def open_embedder(cfg: PipelineConfig):
    from ..embedding import Embedder

    return Embedder(cfg.score.embedder, device=cfg.score.embedder_device)


def score_explanations(cfg: PipelineConfig, hookpoint: str, name: str, client, embedder,
                       progress: bool = True) -> pa.Table:
    """Score one partition's explanations on its test windows; written to `scores`."""
    from .scorers import score_partition

    key = (hookpoint, name)
    examples, explained = fresh_files(cfg, "examples", key), fresh_files(cfg, "explanations", key)
    table = score_partition(pq.read_table(examples[0]), pq.read_table(explained[0]), cfg.score, token_decoder(cfg),
                            cfg.seed, cfg.examples.n_quantiles, cfg.explain.prompt.highlight_threshold,
                            client=client, embedder=embedder, progress=progress)
    lake_for(cfg).write_partition(table, "scores", hookpoint, name,
                                  provenance=lineage_of(cfg).provenance("scores", key))
    return table


def score_summary(cfg: PipelineConfig) -> pa.Table:
    """Per layer, SAE variant, scorer and source: means of the per-latent scores with bootstrap intervals."""
    from .metrics import bootstrap_mean_ci
    from .scorers import defined

    with connect_fresh(cfg, "scores") as con:
        groups = run_query(con, "score_values").to_arrow_table().to_pylist()
    rows = []
    for g in groups:
        row = {k: g[k] for k in ("layer", "sae", "scorer", "source", "n_latents", "n_examples", "n_failures")}
        for metric in ("balanced_accuracy", "f1", "auc"):
            values = [math.nan if v is None else v for v in g[metric]]
            interval = bootstrap_mean_ci(values, n_boot=cfg.score.bootstrap, seed=cfg.seed)
            # NULL, not NaN, where no latent has the metric.
            row.update(zip((metric, f"{metric}_lo", f"{metric}_hi"), (defined(v) for v in interval)))
        row["bin_accuracy"] = g["bin_accuracy"]
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    if rows:
        lake_for(cfg).write_partition(table, "score_summary", provenance=lineage_of(cfg).provenance("score_summary"))
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

    from ..plots import accuracy_by_quantile, markdown_image, score_histograms
    from .metrics import PRIMARY_METRIC

    lake = lake_for(cfg)
    with connect_fresh(cfg, "scores") as con:
        points = run_query(con, "score_points").to_arrow_table().to_pylist()
    panels = defaultdict(lambda: defaultdict(list))
    for p in points:
        metric = PRIMARY_METRIC[p["scorer"]]
        label = "AUC" if metric == "auc" else "balanced accuracy"
        panels[f"{p['scorer']} ({label})"][p["source"]].append(math.nan if p[metric] is None else p[metric])
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


CHECKS = (CheckSpec("controls_near_chance", WARN,
                     "each scorer's control scores (another latent's explanation) sit near 0.5; a scorer off "
                     "chance on controls is broken"),)


def check_scores(cfg: PipelineConfig, key: tuple[str, str]) -> list[CheckOutcome]:
    """The partition's data checks, recorded in the lake's `checks` table."""
    from .checks import controls_near_chance

    outcomes = [controls_near_chance(lake_for(cfg).files("scores", *key), seed=cfg.seed)]
    return record_checks(cfg, "scores", key, outcomes)

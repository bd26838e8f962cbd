"""Report plots as PNG bytes (matplotlib's Agg canvas, no display and no pyplot state), for files and metadata.

Every function takes plain Python / numpy data, returns the PNG bytes and, given `path`, also writes them there.
Empty or all-NaN input gives a small figure that says "no data" rather than an error.
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Real explanations and their controls keep the same colours in every panel.
_SERIES_COLOURS = {"real": "C0", "control": "C1"}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)  # attaches itself: rendering never goes through pyplot or the default backend
    return figure


def _finish(figure: Figure, path: str | Path | None) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    png = buffer.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(png)
    return png


def _finish_lines(figure: Figure, ax, xlabel: str, ylabel: str, title: str, path: str | Path | None) -> bytes:
    """Labels, grid and legend of a line plot, then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return _finish(figure, path)


def _no_data(title: str, path: str | Path | None) -> bytes:
    figure = _figure(4, 2.5)
    ax = figure.add_subplot()
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=14, color="grey", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_axis_off()
    return _finish(figure, path)


def _finite(values) -> np.ndarray:
    array = np.asarray(values if values is not None else [], dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def _panel_name(key) -> str:
    return " / ".join(str(part) for part in key) if isinstance(key, tuple) else str(key)


def _score_panels(scores) -> dict[str, dict[str, np.ndarray]]:
    """{panel: {series: values}} from any of the forms `score_histograms` accepts."""
    if isinstance(scores, Mapping):
        if all(isinstance(v, Mapping) for v in scores.values()):
            return {_panel_name(k): {str(s): _finite(v) for s, v in series.items()} for k, series in scores.items()}
        return {"": {_panel_name(k): _finite(v) for k, v in scores.items()}}
    if not isinstance(scores, pa.Table):
        scores = list(scores)
    if not len(scores):
        return {}
    rows = pl.from_arrow(scores) if isinstance(scores, pa.Table) else pl.from_dicts(scores, infer_schema_length=None)
    missing = pl.lit(None, pl.String)
    column = {c: pl.col(c).cast(pl.String) if c in rows.columns else missing for c in ("variant", "scorer", "kind")}
    control = pl.col("control").fill_null(False).cast(pl.Boolean) if "control" in rows.columns else pl.lit(False)
    grouped = rows.select(
        panel=pl.concat_str([column["variant"], column["scorer"]], separator=" / ", ignore_nulls=True),
        series=pl.coalesce(column["kind"], pl.when(control).then(pl.lit("control")).otherwise(pl.lit("real"))),
        value=pl.col("value").cast(pl.Float64) if "value" in rows.columns else pl.lit(None, pl.Float64),
    ).group_by("panel", "series", maintain_order=True).agg("value")
    panels: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for panel, series, values in grouped.iter_rows():
        panels[panel][series] = _finite(values)  # nulls become NaN and are left out
    return dict(panels)


def score_histograms(scores, metric: str = "score", bins: int = 20, path: str | Path | None = None) -> bytes:
    """Histograms of a score, one panel per scorer (or variant and scorer), real and control overlaid.

    `scores` is one of: {panel: {series: values}} (panel a string or a (variant, scorer) tuple, series e.g.
    "real" / "control"); {series: values} for a single panel; or rows (a list of dicts or a pyarrow Table) with
    `value`, `scorer`, optionally `variant`, and either `kind` (the series name) or a boolean `control`.
    NaN values are left out.
    """
    panels = {name: series for name, series in _score_panels(scores).items() if any(v.size for v in series.values())}
    if not panels:
        return _no_data(metric, path)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    figure = _figure(4.2 * ncols, 3.2 * nrows)
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for ax, (name, series) in zip(axes.ravel(), panels.items()):
        values = np.concatenate([v for v in series.values() if v.size])
        lo, hi = float(values.min()), float(values.max())
        if lo == hi:  # one distinct value: give the bars some width
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)  # shared bins so the overlaid histograms compare
        # Real first, control second, then anything else, so colours and legend order are stable.
        ordered = [s for s in _SERIES_COLOURS if s in series] + sorted(s for s in series if s not in _SERIES_COLOURS)
        for i, label in enumerate(ordered):
            if series[label].size:
                ax.hist(series[label], bins=edges, alpha=0.55, color=_SERIES_COLOURS.get(label, f"C{i + 2}"),
                        label=f"{label} (n={series[label].size}, mean {series[label].mean():.2f})")
        ax.set_title(name or metric, fontsize=10)
        ax.set_xlabel(metric)
        ax.set_ylabel("latents")
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.set_axis_off()
    figure.tight_layout()
    return _finish(figure, path)


def accuracy_by_quantile(per_variant: Mapping[str, Sequence[float]], bin_labels: Sequence[str] | None = None,
                         ylabel: str = "accuracy", chance: float | None = None,
                         path: str | Path | None = None) -> bytes:
    """Accuracy per activation-quantile bin (1 = weakest), one line per variant; NaN bins are skipped."""
    lines = {}
    for variant, values in per_variant.items():
        y = np.asarray(values, dtype=np.float64).ravel()
        x = np.arange(1, y.size + 1)
        finite = np.isfinite(y)
        if finite.any():
            lines[variant] = (x[finite], y[finite])
    if not lines:
        return _no_data(f"{ylabel} by activation quantile", path)
    figure = _figure(6.5, 4)
    ax = figure.add_subplot()
    for variant, (x, y) in lines.items():
        ax.plot(x, y, marker="o", label=str(variant))
    n_bins = max(len(v) for v in per_variant.values())
    ax.set_xticks(np.arange(1, n_bins + 1))
    if bin_labels is not None:
        ax.set_xticklabels(list(bin_labels)[:n_bins], rotation=30, ha="right")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    return _finish_lines(figure, ax, "activation quantile bin (1 = weakest)", ylabel,
                         f"{ylabel} by activation quantile", path)


def similarity_heatmap(labels: Sequence[str], matrix, title: str = "mean best similarity",
                       col_labels: Sequence[str] | None = None, path: str | Path | None = None) -> bytes:
    """An annotated heatmap of `matrix` [rows, cols] (e.g. mean best similarity between SAE variants).

    `labels` names the rows, and the columns too unless `col_labels` is given; NaN cells are grey and unlabelled.
    """
    col_labels = list(labels) if col_labels is None else list(col_labels)
    values = np.asarray(matrix, dtype=np.float64)
    if not len(labels) or not col_labels or values.size == 0:
        return _no_data(title, path)
    if values.shape != (len(labels), len(col_labels)):
        raise ValueError(f"matrix has shape {values.shape}, labels give {(len(labels), len(col_labels))}")
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    size = 0.7 * max(values.shape) + 2.5
    figure = _figure(size + 1, size)
    ax = figure.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            dark = (value - vmin) / (vmax - vmin) < 0.6  # viridis is dark at the low end
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(np.arange(len(col_labels)))
    ax.set_xticklabels(col_labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(labels)))
    ax.set_yticklabels(list(labels), fontsize=8)
    ax.set_title(title)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return _finish(figure, path)


def similarity_vs_distance(points: Iterable[tuple[float, float, str]], xlabel: str = "layer distance",
                           ylabel: str = "mean best similarity", path: str | Path | None = None) -> bytes:
    """Similarity against layer distance: every (distance, value, series) point, and a line through each
    series' mean at each distance. Points with a NaN value are left out."""
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for distance, value, label in points:
        if value is not None and np.isfinite(value) and np.isfinite(distance):
            series[str(label)][float(distance)].append(float(value))
    if not series:
        return _no_data(f"{ylabel} vs {xlabel}", path)
    figure = _figure(6.5, 4)
    ax = figure.add_subplot()
    for i, (label, by_distance) in enumerate(series.items()):
        colour = f"C{i % 10}"
        xs = sorted(by_distance)
        scatter_x = [x for x in xs for _ in by_distance[x]]
        scatter_y = [v for x in xs for v in by_distance[x]]
        ax.scatter(scatter_x, scatter_y, color=colour, alpha=0.45, s=18)
        ax.plot(xs, [float(np.mean(by_distance[x])) for x in xs], color=colour, marker="o", label=label)
    return _finish_lines(figure, ax, xlabel, ylabel, f"{ylabel} vs {xlabel}", path)


def markdown_image(png_bytes: bytes, alt: str = "plot") -> str:
    """A markdown image with the PNG inlined as a data URI (for Dagster's markdown metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png_bytes).decode('ascii')})"

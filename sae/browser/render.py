"""Server-side pieces of the pages: activation histograms as inline SVG, windows as highlighted token spans,
and number formatting. Everything returned as markup is escaped here (Jinja marks it safe)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

HIGHLIGHT_RGB = "255, 111, 0"  # one hue for activation: stronger is more opaque
HIST_WIDTH, HIST_HEIGHT, HIST_PAD = 420, 150, 30


def number(value, digits: int = 3) -> str:
    """A figure for a table cell: `digits` significant digits, an em dash where it is not defined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def percent(value) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.3g}%"


def shown_token(text: str) -> str:
    """A token's text as a window shows it: line breaks and tabs visible, nothing collapsed."""
    return text.replace("\n", "↵").replace("\t", "⇥")


def window_markup(texts: Sequence[str], acts: Sequence[float], max_act: float | None) -> Markup:
    """One window's tokens, each a span whose background alpha is act / max_act (the latent's largest
    activation), with the activation on hover (`title`) and exact (`data-act`, as stored)."""
    spans = []
    for text, act in zip(texts, acts):
        act = 0.0 if act is None else float(act)
        alpha = min(1.0, act / max_act) if max_act and act > 0 else 0.0
        style = f' style="background: rgba({HIGHLIGHT_RGB}, {alpha:.3f})"' if alpha > 0 else ""
        spans.append(f'<span class="tok{" lit" if act > 0 else ""}"{style} title="{act:.4g}" '
                     f'data-act="{act!r}">{escape(shown_token(text))}</span>')
    return Markup("".join(spans))


def histogram_svg(counts: Sequence[int], max_act: float, edges: Sequence[float] | None) -> Markup:
    """Bars of activation counts in equal bins over (0, max_act] (heights on a log scale, as a latent's
    activations are skewed), with the quantile edges that bin its quantile windows drawn as dashed lines."""
    n = len(counts)
    inner_w, inner_h = HIST_WIDTH - 2 * HIST_PAD, HIST_HEIGHT - 2 * HIST_PAD
    top = math.log1p(max(counts)) if counts and max(counts) > 0 else 1.0
    bar_w = inner_w / max(n, 1)
    parts = [f'<svg class="histogram" viewBox="0 0 {HIST_WIDTH} {HIST_HEIGHT}" role="img" '
             f'aria-label="histogram of activations">']
    for i, count in enumerate(counts):
        height = inner_h * math.log1p(count) / top
        lo, hi = max_act * i / n, max_act * (i + 1) / n
        parts.append(f'<rect class="bar" x="{HIST_PAD + i * bar_w:.2f}" y="{HIST_PAD + inner_h - height:.2f}" '
                     f'width="{max(bar_w - 1, 0.5):.2f}" height="{height:.2f}" data-count="{count}">'
                     f'<title>{lo:.3g}–{hi:.3g}: {count:,}</title></rect>')
    for j, edge in enumerate(edges or []):
        x = HIST_PAD + inner_w * min(edge / max_act, 1.0) if max_act else HIST_PAD
        parts.append(f'<line class="quantile" x1="{x:.2f}" x2="{x:.2f}" y1="{HIST_PAD - 6}" '
                     f'y2="{HIST_PAD + inner_h}"><title>quantile edge {j + 1}0%: {edge:.3g}</title></line>')
    base = HIST_PAD + inner_h
    parts.append(f'<line class="axis" x1="{HIST_PAD}" x2="{HIST_PAD + inner_w}" y1="{base}" y2="{base}"/>')
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        x = HIST_PAD + inner_w * fraction
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">{max_act * fraction:.3g}</text>')
    parts.append(f'<text x="{HIST_PAD}" y="{HIST_PAD - 10}">count (log) · peak {max(counts, default=0):,}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

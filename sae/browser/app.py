"""The latent browser: server-rendered pages over a lake, read-only (see sae/browser/lake.py).

Pages: `/` overview, `/variant/<layer>/<sae>` latent list, `/latent/<layer>/<sae>/<id>` one latent's evidence,
`/search` (by meaning, by keyword, by token), `/compare` (two variants' matched latents). Every request
parameter is parsed into a typed value and bound into a query from sql/; an unknown variant or latent is a
404 page that lists what exists.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import NO_EXPLAINER, ModelConfig
from ..lake import TABLES
from ..scoring.calibration import calibration_line, verdict
from ..scoring.metrics import PRIMARY_METRIC
from . import render
from .lake import BrowserLake
from .resources import (WITHOUT_DECODER, Embedders, TokenTexts, context_tokens, embedding_index, occurrences,
                        unit_decoder)

log = logging.getLogger(__name__)
PAGE_SIZES = (25, 50, 100, 200)
SORTS = ("latent", "frequency", "max_act", "score")
EXPLAINED = ("all", "yes", "no")
METHODS = ("explanation_optimal", "explanation_best", "decoder_optimal", "decoder_best")
# The explainer standing for a latent: the LLM's where there is one; the intruder's rows read no explanation.
EXPLAINER_ORDER = ("llm", "tokens", "truth", NO_EXPLAINER)
N_NEIGHBOURS = 10
N_RESULTS = 20
# Positions of a searched string considered: the first ones in ctx_id order, so the search reads only the chunk
# files of the contexts that hold them.
MAX_OCCURRENCES = 1000
MAX_QUERY_CHARS = 200
WINDOW_GROUPS = (  # (title, split, kinds) of the windows on a latent page, in order
    ("Top activations", "train", ("top",)),
    ("Quantile windows (train)", "train", ("quantile",)),
    ("Held-out activating windows (test)", "test", ("top", "quantile")),
    ("Silent windows (test, random)", "test", ("random",)),
    ("Hard negatives (test, windows where neighbour latents fire)", "test", ("neighbour",)),
)


class NotFound(HTTPException):
    """A 404 whose page says what was not found and what exists instead."""

    def __init__(self, message: str, exists: list[tuple[str, str]]):
        super().__init__(404, message)
        self.exists = exists  # (label, url) pairs


@dataclass(frozen=True)
class Variant:
    layer: str
    sae: str
    source: str | None
    num_latents: int | None
    l0: float | None = None
    fvu: float | None = None

    @property
    def label(self) -> str:
        return f"{self.layer} / {self.sae}"

    @property
    def key(self) -> str:
        return f"{self.layer}|{self.sae}"

    @property
    def url(self) -> str:
        return f"/variant/{self.layer}/{self.sae}"

    @property
    def has_decoder(self) -> bool:
        return self.source not in WITHOUT_DECODER


def latent_url(layer: str, sae: str, latent: int) -> str:
    return f"/latent/{layer}/{sae}/{latent}"


def metric_of(scorer: str) -> str:
    """The scorer's primary metric; a scorer the browser does not know is read by balanced accuracy."""
    return PRIMARY_METRIC.get(scorer, "balanced_accuracy")


def _int(request: Request, name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
    raw = request.query_params.get(name)
    try:
        value = int(raw) if raw not in (None, "") else default
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number, not {raw!r}") from None
    return max(lo, value if hi is None else min(hi, value))


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise HTTPException(400, f"{name} must be a finite number")
    return value


def _choice(request: Request, name: str, choices: tuple[str, ...]) -> str:
    raw = request.query_params.get(name) or choices[0]
    if raw not in choices:
        raise HTTPException(400, f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


def _text(request: Request, name: str) -> str:
    return (request.query_params.get(name) or "").strip()[:MAX_QUERY_CHARS]


class Browser:
    def __init__(self, lake_root: Path, model: ModelConfig, embedder: str, embedder_device: str = "auto"):
        self.lake = BrowserLake(lake_root)
        self.texts = TokenTexts(model, self.lake.root)
        self.embedders = Embedders(embedder_device)
        self.default_embedder = embedder
        self.templates = Environment(loader=PackageLoader("sae.browser", "templates"),
                                     autoescape=select_autoescape(), trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["zip"] = zip
        self.templates.globals.update(number=render.number, percent=render.percent, latent_url=latent_url,
                                      verdict=verdict, lake_root=str(self.lake.root))

    # ---- shared pieces -------------------------------------------------------------------------------------

    def page(self, template: str, status: int = 200, **context) -> HTMLResponse:
        html = self.templates.get_template(template).render(**context, variants=self.variants())
        return HTMLResponse(html, status_code=status)

    def variants(self) -> list[Variant]:
        """Every variant of the lake, read once per state of the lake (each page asks several times)."""
        if not self.lake.has("sae_metrics"):
            return []
        return self.lake.cached("variants", lambda: [
            Variant(r["layer"], r["sae"], r["source"], r["num_latents"], r["l0"], r["fvu"])
            for r in self.lake.rows("browser_variants")])

    def variant(self, layer: str, sae: str) -> Variant:
        variants = self.variants()
        for v in variants:
            if (v.layer, v.sae) == (layer, sae):
                return v
        layers = sorted({v.layer for v in variants})
        what = f"layer {layer!r}" if layer not in layers else f"sae {sae!r} at layer {layer!r}"
        raise NotFound(f"The lake has no {what}.", [(v.label, v.url) for v in variants])

    def calibration(self) -> dict[str, dict]:
        """Per scorer: its calibration rows (one per scorer model), `calibrated`, the worst of theirs (a scorer
        counts as calibrated only where every scorer model of it is), and `applicable`, false for the scorers
        that planted latents cannot calibrate (intervention steers with a decoder they lack)."""
        if not self.lake.has("scorer_calibration"):
            return {}
        out: dict[str, dict] = {}
        for r in self.lake.rows("browser_calibration"):
            out.setdefault(r["scorer"], {"rows": [], "calibrated": True})["rows"].append(r)
        for entry in out.values():
            flags = [r["calibrated"] for r in entry["rows"]]
            entry["calibrated"] = False if False in flags else None if None in flags else True
            entry["applicable"] = any(r.get("applicable", True) is not False for r in entry["rows"])
        return out

    def main_explainer(self, layer: str, sae: str) -> str:
        present = {r["explainer"] for r in self.lake.rows("browser_variant_explainers", layer=layer, sae=sae)}
        return next((e for e in EXPLAINER_ORDER if e in present), sorted(present)[0] if present else "llm")

    def explanations_of(self, keys: list[tuple[str, str, int]], explainer: str = "llm") -> dict[tuple, str]:
        if not keys or not self.lake.has("explanations"):
            return {}
        rows = self.lake.rows("browser_explanations_of", layers=[k[0] for k in keys], saes=[k[1] for k in keys],
                              latents=[int(k[2]) for k in keys], explainer=explainer)
        return {(r["layer"], r["sae"], r["latent"]): r["explanation"] for r in rows}

    def linked(self, found: list[tuple[tuple, float]]) -> list[dict]:
        """Search or neighbour hits as rows with their explanation and page."""
        texts = self.explanations_of([key for key, _ in found])
        return [{"layer": k[0], "sae": k[1], "latent": k[2], "score": s, "explanation": texts.get(k),
                 "url": latent_url(*k)} for k, s in found]

    # ---- pages ---------------------------------------------------------------------------------------------

    def overview(self, request: Request) -> HTMLResponse:
        variants = self.variants()
        quality = {(r["layer"], r["sae"]): r for r in self.lake.rows("browser_quality")} \
            if self.lake.has("sae_quality") else {}
        counts = {(r["layer"], r["sae"]): r for r in self.lake.rows("browser_variant_counts")} \
            if self.lake.has("latent_stats") else {}
        summary = self.lake.rows("browser_score_summary") if self.lake.has("score_summary") else []
        scorers = sorted({r["scorer"] for r in summary})
        means: dict[tuple, dict] = {}
        for r in summary:
            means.setdefault((r["layer"], r["sae"], r["scorer"]), {}).setdefault(r["explainer"], {})[r["source"]] = r
        rows = []
        for v in variants:
            cells = {}
            for scorer in scorers:
                by_explainer = means.get((v.layer, v.sae, scorer), {})
                main = next((e for e in EXPLAINER_ORDER if e in by_explainer), None)
                metric = metric_of(scorer)
                pick = lambda explainer, source: by_explainer.get(explainer, {}).get(source)  # noqa: E731
                cells[scorer] = {"metric": metric, "explainer": main,
                                 "real": pick(main, "real"), "control": pick(main, "control"),
                                 "baseline": pick("tokens", "real") if main == "llm" else None}
            rows.append({"variant": v, "quality": quality.get((v.layer, v.sae), {}),
                         "counts": counts.get((v.layer, v.sae)), "cells": cells})
        return self.page("overview.html", rows=rows, scorers=scorers, calibration=self.calibration(),
                         calibration_line=calibration_line,
                         missing=self.lake.missing(*TABLES), request=request)

    def latent_list(self, request: Request) -> HTMLResponse:
        v = self.variant(request.path_params["layer"], request.path_params["sae"])
        if not self.lake.has("latent_stats"):
            return self.page("variant.html", v=v, missing=["latent_stats"], rows=[], scorers=[], form={},
                             request=request)
        scorers = [r["scorer"] for r in self.lake.rows("browser_variant_scorers", layer=v.layer, sae=v.sae)]
        sort = _choice(request, "sort", SORTS + tuple(f"score:{s}" for s in scorers))
        sort_scorer = sort.split(":", 1)[1] if sort.startswith("score:") else None
        per_page = _int(request, "per_page", PAGE_SIZES[1], 1, PAGE_SIZES[-1])
        page = _int(request, "page", 1, 1)
        form = {"sort": sort, "order": _choice(request, "order", ("desc", "asc")),
                "explained": _choice(request, "explained", EXPLAINED), "per_page": per_page,
                "min_frequency": _float(request, "min_frequency"), "max_frequency": _float(request, "max_frequency")}
        explainer = self.main_explainer(v.layer, v.sae)
        rows = self.lake.rows(
            "browser_latent_list", layer=v.layer, sae=v.sae, explainer=explainer,
            no_explainer=NO_EXPLAINER, sort="score" if sort_scorer else sort, sort_scorer=sort_scorer,
            sort_metric=metric_of(sort_scorer) if sort_scorer else None, descending=form["order"] == "desc",
            explained=form["explained"], min_frequency=form["min_frequency"], max_frequency=form["max_frequency"],
            limit=per_page, offset=(page - 1) * per_page)
        for r in rows:
            r["score_of"] = {s["scorer"]: s[metric_of(s["scorer"])] for s in r["scores"] or []}
        total = rows[0]["total"] if rows else 0
        return self.page("variant.html", v=v, rows=rows, scorers=scorers, form=form, page=page, total=total,
                         pages=max(1, -(-total // per_page)), explainer=explainer, calibration=self.calibration(),
                         metric_of=metric_of, missing=self.lake.missing("explanations", "scores"), request=request)

    def latent_page(self, request: Request) -> HTMLResponse:
        v = self.variant(request.path_params["layer"], request.path_params["sae"])
        latent = request.path_params["latent"]
        key = (v.layer, v.sae, latent)
        stats = None
        if self.lake.has("latent_stats"):
            found = self.lake.rows("browser_latent_stats", layer=v.layer, sae=v.sae, latent=latent)
            stats = found[0] if found else None
        width = v.num_latents
        if stats is None and (width is None or not 0 <= latent < width):
            raise NotFound(f"{v.label} has no latent {latent}: its latents are 0 to {(width or 1) - 1}.",
                           [(f"latent 0 of {v.label}", latent_url(v.layer, v.sae, 0)), (f"all of {v.label}", v.url)])
        max_act = stats["max_act"] if stats else None
        context = {"v": v, "latent": latent, "stats": stats, "request": request,
                   "missing": self.lake.missing("latent_stats", "examples", "explanations", "scores",
                                                "latent_logits", "explanation_embeddings", "similarity")}
        context["explanations"] = [row for table in ("explanations", "output_explanations") if self.lake.has(table)
                                   for row in self.lake.rows(f"browser_latent_{table}", layer=v.layer, sae=v.sae,
                                                             latent=latent)]
        context["scores"] = self.score_table(v, latent)
        context["histogram"] = self.histogram(stats)
        context["windows"] = self.windows(v, latent, max_act)
        logits = self.lake.rows("browser_latent_logits", layer=v.layer, sae=v.sae, latent=latent) \
            if self.lake.has("latent_logits") else []
        context["logits"] = logits[0] if logits else None
        context["decoder_neighbours"] = self.decoder_neighbours(v, latent)
        index = embedding_index(self.lake) if self.lake.has("explanation_embeddings") else None
        row = index.row_of.get(key) if index else None
        context["explanation_neighbours"] = None if row is None else self.linked(
            index.nearest(index.matrix[row], N_NEIGHBOURS, within=(v.layer, v.sae), exclude=key))
        matches = self.lake.rows("browser_latent_matches", layer=v.layer, sae=v.sae, latent=latent) \
            if self.lake.has("similarity") else []
        texts = self.explanations_of([(m["layer"], m["sae"], m["latent"]) for m in matches])
        for m in matches:
            m["explanation"] = texts.get((m["layer"], m["sae"], m["latent"]))
        context["matches"] = matches
        return self.page("latent.html", **context)

    def score_table(self, v: Variant, latent: int) -> list[dict]:
        """Per scorer and explainer: the real score beside its control, with the scorer's calibration."""
        if not self.lake.has("scores"):
            return []
        calibration = self.calibration()
        table: dict[tuple, dict] = {}
        for r in self.lake.rows("browser_latent_scores", layer=v.layer, sae=v.sae, latent=latent):
            metric = metric_of(r["scorer"])
            # A source may have no row (a scorer without controls, a control that could not be drawn): its
            # cell shows a dash, not an error.
            cell = table.setdefault((r["scorer"], r["explainer"]), {
                "scorer": r["scorer"], "explainer": r["explainer"], "metric": metric,
                "calibrated": calibration.get(r["scorer"], {}).get("calibrated"),
                "calibration": calibration.get(r["scorer"]),
                "real": None, "control": None, "real_row": None, "control_row": None})
            cell[r["source"]] = r[metric]
            cell[f"{r['source']}_row"] = r
        return list(table.values())

    def histogram(self, stats: dict | None):
        """The latent's stored histogram (latent_stats.histogram); None where it never fired, or its
        latent_stats predate the column (`saelake run` rebuilds them)."""
        if stats is None or not stats["max_act"] or not stats.get("histogram"):
            return None
        return render.histogram_svg(stats["histogram"], float(stats["max_act"]), stats["quantile_edges"])

    def windows(self, v: Variant, latent: int, max_act: float | None) -> list[dict]:
        if not self.lake.has("examples"):
            return []
        rows = self.lake.rows("browser_latent_examples", layer=v.layer, sae=v.sae, latent=latent)
        peak = max_act or max((max(r["acts"] or [0]) for r in rows), default=0)
        groups = []
        for title, split, kinds in WINDOW_GROUPS:
            shown = [{**r, "markup": render.window_markup(self.texts.texts(r["tokens"]), r["acts"], peak)}
                     for r in rows if r["split"] == split and r["kind"] in kinds]
            groups.append({"title": title, "windows": shown})
        return groups

    def decoder_of(self, v: Variant) -> np.ndarray | None:
        """The variant's unit decoder rows, None where it has no decoder (neurons, planted) or no saes partition."""
        if not v.has_decoder or not (self.lake.root / "saes" / f"layer={v.layer}" / f"sae={v.sae}").is_dir():
            return None
        return unit_decoder(self.lake, v.layer, v.sae)

    def warm_up(self) -> None:
        """Load what the first latent page would wait for (the tokenizer, every decoder, the explanation
        embeddings), so that its visitor does not. A failure here is only logged: the page that needs the
        piece loads it again and shows the error."""
        try:
            self.texts.tokenizer
            for v in self.variants():
                self.decoder_of(v)
            if self.lake.has("explanation_embeddings"):
                embedding_index(self.lake)
        except Exception as err:  # noqa: BLE001 - a warm-up must never stop the server
            log.warning("the browser's warm-up stopped (%s); pages load what they need themselves", err)

    def decoder_neighbours(self, v: Variant, latent: int) -> list[dict] | None:
        """The latents of the same SAE whose decoder directions are closest (cosine); None without a decoder."""
        decoder = self.decoder_of(v)
        if decoder is None or latent >= len(decoder):
            return None
        sims = decoder @ decoder[latent]
        sims[latent] = -np.inf
        top = np.argpartition(-sims, N_NEIGHBOURS)[:N_NEIGHBOURS] if len(sims) > N_NEIGHBOURS else np.arange(len(sims))
        nearest = top[np.argsort(-sims[top])]
        return self.linked([((v.layer, v.sae, int(i)), float(sims[i])) for i in nearest])

    def search(self, request: Request) -> HTMLResponse:
        query, token = _text(request, "q"), _text(request, "token")
        variants = [v for v in self.variants() if v.source != "planted"] or self.variants()
        chosen = request.query_params.get("variant") or (variants[0].key if variants else "")
        context = {"query": query, "token": token, "chosen": chosen, "search_variants": variants,
                   "request": request, "meaning": None, "keyword": None, "token_hits": None, "notes": []}
        if query:
            context["keyword"] = [{**r, "url": latent_url(r["layer"], r["sae"], r["latent"])}
                                  for r in self.lake.rows("browser_keyword_search", text=query, limit=N_RESULTS)] \
                if self.lake.has("explanations") else None
            if self.lake.has("explanation_embeddings"):
                index = embedding_index(self.lake)
                name = index.embedders[0] if index.embedders else self.default_embedder
                vector = self.embedders.get(name).embed([query])[0]
                context["meaning"] = self.linked(index.nearest(vector, N_RESULTS))
                context["embedder"] = name
            else:
                context["notes"].append("No explanation embeddings yet: search by meaning needs the "
                                        "explanation_embeddings table.")
        if token:
            layer, _, sae = chosen.partition("|")
            v = self.variant(layer, sae)
            context["token_hits"] = self.token_search(v, token, context["notes"])
        return self.page("search.html", **context)

    def token_search(self, v: Variant, text: str, notes: list[str]) -> list[dict] | None:
        if not self.lake.has("contexts", "latents"):
            notes.append("Token search needs the contexts and latents tables.")
            return None
        tokens = context_tokens(self.lake)
        ctx_ids, positions = [], []
        for ids in self.texts.encodings(text):
            c, p = occurrences(tokens, ids, MAX_OCCURRENCES)
            ctx_ids.extend(c.tolist())
            positions.extend(p.tolist())
        if not ctx_ids:
            notes.append(f"{text!r} does not occur in the lake's contexts.")
            return []
        notes.append(f"{text!r} occurs at {len(ctx_ids):,} positions"
                     f"{' (the first ones)' if len(ctx_ids) >= MAX_OCCURRENCES else ''}; activation there, "
                     f"averaged over every occurrence:")
        hits = self.lake.rows("browser_token_search", layer=v.layer, sae=v.sae, ctx_ids=ctx_ids,
                              positions=positions, n_hits=len(ctx_ids), first_ctx=min(ctx_ids),
                              last_ctx=max(ctx_ids), limit=N_RESULTS)
        texts = self.explanations_of([(v.layer, v.sae, h["latent"]) for h in hits])
        return [{**h, "layer": v.layer, "sae": v.sae, "url": latent_url(v.layer, v.sae, h["latent"]),
                 "explanation": texts.get((v.layer, v.sae, h["latent"]))} for h in hits]

    def compare(self, request: Request) -> HTMLResponse:
        summary = self.lake.rows("browser_similarity_summary") if self.lake.has("similarity_summary") else []
        for r in summary:
            r["url"] = f"/compare?a={r['layer_a']}|{r['sae_a']}&b={r['layer_b']}|{r['sae_b']}"
        a, b = request.query_params.get("a"), request.query_params.get("b")
        context = {"summary": summary, "request": request, "pair": None, "pairs": [], "a": a, "b": b,
                   "method": _choice(request, "method", METHODS), "methods": METHODS,
                   "missing": self.lake.missing("similarity", "similarity_summary")}
        if a and b:
            va, vb = (self.variant(*side.partition("|")[::2]) for side in (a, b))
            context["va"], context["vb"] = va, vb
            context["pair"] = next((r for r in summary if {(r["layer_a"], r["sae_a"]), (r["layer_b"], r["sae_b"])}
                                    == {(va.layer, va.sae), (vb.layer, vb.sae)}), None)
            page = _int(request, "page", 1, 1)
            pairs = self.lake.rows("browser_compare_pairs", method=context["method"], layer_a=va.layer,
                                   sae_a=va.sae, layer_b=vb.layer, sae_b=vb.sae, limit=100,
                                   offset=(page - 1) * 100) if self.lake.has("similarity") else []
            texts = self.explanations_of([(va.layer, va.sae, p["latent_a"]) for p in pairs]
                                         + [(vb.layer, vb.sae, p["latent_b"]) for p in pairs])
            for p in pairs:
                p["text_a"] = texts.get((va.layer, va.sae, p["latent_a"]))
                p["text_b"] = texts.get((vb.layer, vb.sae, p["latent_b"]))
            context["pairs"], context["page"] = pairs, page
        return self.page("compare.html", **context)

    async def not_found(self, request: Request, exc: HTTPException) -> HTMLResponse:
        exists = getattr(exc, "exists", None)
        if exists is None:  # a path no route knows: point at every variant
            exists = [(v.label, v.url) for v in self.variants()]
        return self.page("error.html", status=exc.status_code, message=exc.detail, exists=exists,
                         request=request)

    async def bad_request(self, request: Request, exc: HTTPException) -> HTMLResponse:
        return self.page("error.html", status=exc.status_code, message=exc.detail, exists=[], request=request)


def create_app(lake_root: Path, model: ModelConfig, embedder: str, embedder_device: str = "auto") -> Starlette:
    """The browser as an ASGI app over the lake at `lake_root`, the tokenizer of `model` and the embedder named
    `embedder` (used where the lake's explanation embeddings name none)."""
    browser = Browser(Path(lake_root), model, embedder, embedder_device)
    static = StaticFiles(directory=str(files("sae.browser") / "static"))
    routes = [
        Route("/", browser.overview),
        Route("/variant/{layer}/{sae}", browser.latent_list),
        Route("/latent/{layer}/{sae}/{latent:int}", browser.latent_page),
        Route("/search", browser.search),
        Route("/compare", browser.compare),
        Mount("/static", app=static, name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: browser.not_found, 400: browser.bad_request},
                    middleware=[Middleware(RefreshLake, lake=browser.lake)])
    app.state.browser = browser
    return app


class RefreshLake:
    """Before each request, reopen the lake's views if a partition was committed since the last one (a few
    dozen stat calls), so a page shows the lake as it is while the pipeline fills it."""

    def __init__(self, app, lake: BrowserLake):
        self.app, self.lake = app, lake

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            await run_in_threadpool(self.lake.refresh)
        await self.app(scope, receive, send)


def serve(lake_root: Path, model: ModelConfig, embedder: str, host: str = "127.0.0.1", port: int = 8080,
          embedder_device: str = "auto") -> None:
    import uvicorn

    if not Path(lake_root).is_dir():
        raise FileNotFoundError(f"no lake at {lake_root}; run `saelake run` first (or pass --lake PATH)")
    print(f"browsing {Path(lake_root).resolve()} at http://{host}:{port}/ (read-only; Ctrl-C stops)", flush=True)
    app = create_app(lake_root, model, embedder, embedder_device)
    threading.Thread(target=app.state.browser.warm_up, name="browser-warm-up", daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")

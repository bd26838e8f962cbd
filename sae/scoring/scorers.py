"""Scoring explanations on each latent's held-out test windows, which the explainer never saw.

- detection: the LLM reads the explanation and unmarked windows (activating from every quantile bin, and
  silent ones) and says for each whether the latent fires in it;
- fuzzing: the LLM reads the explanation and marked windows and says whether the marks fit: activating
  windows marked at their truly active tokens are correct; silent windows (and, optionally, activating
  windows marked at inactive tokens) with as many tokens marked at random are not;
- embedding: the AUC of cosine(explanation, window) between activating and silent windows; its hard
  predictions take the top n_activating windows by cosine as positive (R-precision), no threshold to tune.

Every latent is also scored with another latent's explanation (a fixed, seeded derangement, `source` =
control); a scorer whose control is not near chance measures something else than the explanation.

Every explainer present in the partition's explanations (the LLM, the token baseline, a planted latent's truth)
is scored on the same latents and the same windows, so their scores compare pairwise; each explainer's control
deranges its own explanations among the latents it explained.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import polars as pl
import pyarrow as pa

from ..config import LLM_SCORERS, ScoreConfig
from ..explanations.explainer import LLM, Decode
from ..frames import frame
from ..llm.base import ChatRequest, Completion, LLMClient, SamplingParams, TokenLogprobs
from ..prompts import Window, clean_piece, marked_text, parse_answers, scorer_messages, scorer_version
from .metrics import classification_metrics, roc_auc

SCHEMA = pa.schema([
    ("latent", pa.int32()),
    ("explainer", pa.string()),  # which explainer's explanations were scored: llm | tokens | truth
    ("scorer", pa.string()),  # detection | fuzzing | embedding
    ("source", pa.string()),  # real: the latent's own explanation; control: another latent's
    ("explanation_latent", pa.int32()),  # whose explanation was scored
    ("balanced_accuracy", pa.float32()),
    ("f1", pa.float32()),
    ("precision", pa.float32()),
    ("recall", pa.float32()),
    ("accuracy", pa.float32()),
    ("auc", pa.float32()),  # null where the backend gave no probabilities
    ("bin_accuracy", pa.list_(pa.float32())),  # accuracy on activating windows per quantile bin (NaN: none)
    ("silent_accuracy", pa.float32()),  # accuracy on silent windows
    ("n_examples", pa.int32()),  # windows with an answer
    ("n_activating", pa.int32()),
    ("n_failures", pa.int32()),  # windows whose answer could not be read
    ("failed_answers", pa.list_(pa.string())),  # the unreadable replies, raw
    ("scorer_model", pa.string()),
    ("prompt_version", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


@dataclass
class Item:
    """One test window as a scorer shows it."""

    text: str
    label: bool  # what a perfect explanation predicts: activating (detection) / correctly marked (fuzzing)
    bin: int | None  # quantile bin of an activating window


@dataclass
class Judged:
    """Predictions for one (latent, explainer, scorer, source)."""

    labels: list[bool] = field(default_factory=list)
    predictions: list[bool] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)  # P(yes), where the backend gave log-probs
    bins: list[int | None] = field(default_factory=list)
    failures: int = 0
    failed_answers: list[str] = field(default_factory=list)


def derangement(latents: Sequence[int], seed: int) -> dict[int, int]:
    """A fixed permutation of `latents` with no latent mapped to itself (empty for fewer than two)."""
    latents = list(latents)
    if len(latents) < 2:
        return {}
    order = latents[:]
    random.Random(seed).shuffle(order)
    # A cyclic shift of a random order never maps an element to itself.
    return {a: b for a, b in zip(order, order[1:] + order[:1])}


def test_windows(examples: pa.Table | pl.DataFrame, latents: list[int]) -> dict[int, list[dict]]:
    """Each latent's test windows, as the rows the scorers decode one by one (none for a latent without)."""
    test = frame(examples).filter((pl.col("split") == "test") & pl.col("latent").is_in(latents)).select(
        ["latent", "kind", "bin", "ctx_id", "start", "tokens", "acts"])
    groups = test.partition_by("latent", as_dict=True)
    return defaultdict(list, {key[0]: rows.to_dicts() for key, rows in groups.items()})


def sample_for_llm(rows: list[dict], cfg: ScoreConfig, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """`n_activating` activating windows round-robin over the bins, and `n_silent` silent ones."""
    by_bin = defaultdict(list)
    for row in rows:
        if row["kind"] == "quantile":
            by_bin[row["bin"]].append(row)
    for members in by_bin.values():
        rng.shuffle(members)
    activating = []
    while len(activating) < cfg.n_activating and any(by_bin.values()):
        for b in sorted(by_bin):
            if by_bin[b] and len(activating) < cfg.n_activating:
                activating.append(by_bin[b].pop())
    silent = [row for row in rows if row["kind"] != "quantile"]
    return activating, rng.sample(silent, min(cfg.n_silent, len(silent)))


def plain_text(row: dict, decode: Decode) -> str:
    return "".join(clean_piece(p) for p in decode(row["tokens"])).strip()


def detection_items(activating: list[dict], silent: list[dict], decode: Decode) -> list[Item]:
    return ([Item(plain_text(r, decode), True, r["bin"]) for r in activating]
            + [Item(plain_text(r, decode), False, None) for r in silent])


def fuzzing_items(activating: list[dict], silent: list[dict], decode: Decode, threshold: float,
                  wrong_in_activating: bool, rng: random.Random) -> list[Item]:
    """Activating windows marked right; silent windows (and optionally activating ones) marked at random
    positions, as many as an activating window of this latent typically has marked."""
    items, counts = [], []
    for row in activating:
        window = Window(tuple(decode(row["tokens"])), tuple(row["acts"]))
        acts = np.asarray(row["acts"])
        counts.append(int(((acts > 0) & (acts > threshold * acts.max())).sum()))
        items.append(Item(marked_text(window, threshold)[0], True, row["bin"]))
    typical = max(1, round(float(np.median(counts)))) if counts else 1
    wrong = [(row, True) for row in activating] if wrong_in_activating else []
    for row, is_activating in [(row, False) for row in silent] + wrong:
        acts = np.asarray(row["acts"])
        allowed = [i for i in range(len(acts)) if acts[i] <= 0]
        chosen = set(rng.sample(allowed, min(typical, len(allowed))))
        fake = Window(tuple(decode(row["tokens"])), tuple(1.0 if i in chosen else 0.0 for i in range(len(acts))))
        items.append(Item(marked_text(fake, 0.0)[0], False, row["bin"] if is_activating else None))
    return items


def yes_probabilities(logprobs: list[TokenLogprobs] | None, n: int) -> list[float] | None:
    """P(1) at each of the first n answer digits of a reply (as `parse_answers` reads them), from the top
    log-probabilities there; None unless the reply has n digit tokens with 0 or 1 among their alternatives."""
    if not logprobs:
        return None
    probs = []
    for token in logprobs:
        if token.token.strip() not in ("0", "1") or len(probs) == n:
            continue
        top = {}
        for text, logprob in token.top.items():
            top.setdefault(text.strip(), logprob)
        if "0" not in top and "1" not in top:
            return None
        yes, no = math.exp(top.get("1", -math.inf)), math.exp(top.get("0", -math.inf))
        probs.append(yes / (yes + no))
    return probs if len(probs) == n else None


@dataclass
class Batch:
    key: tuple[int, str, str, str]  # (latent, explainer, scorer, source)
    items: list[Item]
    request: ChatRequest


def llm_batches(key: tuple[int, str, str, str], explanation: str, items: list[Item], cfg: ScoreConfig,
                rng: random.Random, sampling: SamplingParams) -> list[Batch]:
    order = items[:]
    rng.shuffle(order)
    batches = []
    for first in range(0, len(order), cfg.batch_size):
        chunk = order[first : first + cfg.batch_size]
        messages = scorer_messages(key[2], explanation, [item.text for item in chunk])
        batches.append(Batch(key, chunk, ChatRequest(messages, sampling)))
    return batches


def judge(batches: list[Batch], completions: list[Completion], judged: dict) -> None:
    for batch, done in zip(batches, completions):
        record = judged.setdefault(batch.key, Judged())
        answers = parse_answers(done.text, len(batch.items))
        if answers is None:
            record.failures += len(batch.items)
            record.failed_answers.append(done.text)
            continue
        probs = yes_probabilities(done.logprobs, len(batch.items))
        for i, (item, answer) in enumerate(zip(batch.items, answers)):
            record.labels.append(item.label)
            record.predictions.append(answer)
            record.bins.append(item.bin)
            record.probabilities.append(probs[i] if probs else math.nan)


def metrics_row(key: tuple[int, str, str, str], explanation_latent: int, record: Judged, n_bins: int,
                scorer_model: str, prompt_version: str, now: datetime) -> dict:
    latent, explainer, scorer, source = key
    labels, preds = np.array(record.labels, bool), np.array(record.predictions, bool)
    metrics = classification_metrics(labels, preds)
    probs = np.array(record.probabilities, dtype=np.float64)
    auc = roc_auc(labels, probs) if probs.size and not np.isnan(probs).any() else None
    correct = labels == preds
    bins = np.array([-1 if b is None else b for b in record.bins], dtype=np.int64)
    bin_accuracy = [float(correct[(bins == b) & labels].mean()) if ((bins == b) & labels).any() else math.nan
                    for b in range(n_bins)]
    silent = ~labels & (bins < 0)
    return {"latent": latent, "explainer": explainer, "scorer": scorer, "source": source,
            "explanation_latent": explanation_latent,
            **metrics, "auc": None if auc is None or math.isnan(auc) else auc, "bin_accuracy": bin_accuracy,
            "silent_accuracy": float(correct[silent].mean()) if silent.any() else math.nan,
            "n_examples": int(labels.size), "n_activating": int(labels.sum()), "n_failures": record.failures,
            "failed_answers": record.failed_answers, "scorer_model": scorer_model,
            "prompt_version": prompt_version, "created_at": now}


@dataclass
class Explained:
    """One explainer's parsed explanations over the scored latents, and the latents each source scores."""

    text_of: dict[int, str]
    sources: list[tuple[str, dict[int, int]]]  # (source, latent -> the latent whose explanation it is given)


def scored_latents(explanations: pl.DataFrame, cap: int | None, seed: int) -> list[int]:
    """The latents the scorers see. Without a cap, those the LLM explained (every explained latent where no LLM
    explained any): the token baseline's other latents are explained, not scored. With a cap, at most `cap`
    latents, those the LLM explained first, then others (each group drawn with the seed)."""
    llm = sorted(set(explanations.filter(pl.col("explainer") == LLM)["latent"]))
    rest = sorted(set(explanations["latent"]) - set(llm))
    if cap is None:
        return llm or rest
    if cap >= len(llm) + len(rest):
        return sorted(llm + rest)
    rng = random.Random(seed)
    picked = rng.sample(llm, min(cap, len(llm)))
    return sorted(picked + rng.sample(rest, cap - len(picked)))


def explained_by(explanations: pa.Table, cfg: ScoreConfig, seed: int) -> dict[str, Explained]:
    """Per explainer present in the partition (parsed rows of the scored latents): texts, real and control."""
    parsed = frame(explanations).filter(pl.col("parsed"))
    latents = scored_latents(parsed, cfg.n_latents, seed)
    out = {}
    for (explainer,), rows in sorted(parsed.filter(pl.col("latent").is_in(latents)).partition_by(
            "explainer", as_dict=True).items()):
        text_of = dict(zip(rows["latent"].to_list(), rows["explanation"].to_list()))
        sources = [("real", {latent: latent for latent in text_of})]
        if cfg.control:
            sources.append(("control", derangement(sorted(text_of), seed)))
        out[explainer] = Explained(text_of, sources)
    return out


def score_partition(examples: pa.Table, explanations: pa.Table, cfg: ScoreConfig, decode: Decode, seed: int,
                    n_bins: int, fuzz_threshold: float, client: LLMClient | None = None, embedder=None,
                    progress: bool = False, batch_requests: int = 512) -> pa.Table:
    """Scores of every parsed explanation of one partition, per explainer, real and (if configured) control."""
    by_explainer = explained_by(explanations, cfg, seed)
    latents = sorted({latent for e in by_explainer.values() for latent in e.text_of})
    windows = test_windows(examples, latents)
    now = datetime.now(timezone.utc)
    rows = []
    llm_scorers = [s for s in cfg.scorers if s in LLM_SCORERS]
    if llm_scorers and latents:
        if client is None:
            raise ValueError(f"scorers {llm_scorers} need an LLM client")
        sampling = SamplingParams(max_tokens=cfg.max_tokens, top_logprobs=5 if client.supports_logprobs else 0)
        batches = []
        for latent in latents:
            # The same windows, in the same order, for every explainer and source of a latent.
            rng = random.Random(f"{seed}/{latent}")
            activating, silent = sample_for_llm(windows[latent], cfg, rng)
            items = {"detection": detection_items(activating, silent, decode),
                     "fuzzing": fuzzing_items(activating, silent, decode, fuzz_threshold,
                                              cfg.fuzz_wrong_in_activating, rng)}
            for scorer in llm_scorers:
                for explainer, explained in by_explainer.items():
                    for source, mapping in explained.sources:
                        if latent in mapping:
                            batches += llm_batches((latent, explainer, scorer, source),
                                                   explained.text_of[mapping[latent]], items[scorer], cfg,
                                                   random.Random(f"{seed}/{latent}/{scorer}"), sampling)
        judged: dict = {}
        for first in range(0, len(batches), batch_requests):
            part = batches[first : first + batch_requests]
            judge(part, client.complete([b.request for b in part], progress=progress), judged)
        for key, record in sorted(judged.items()):
            latent, explainer, scorer, source = key
            mapping = dict(by_explainer[explainer].sources)[source]
            rows.append(metrics_row(key, mapping[latent], record, n_bins, client.model, scorer_version(scorer), now))
    if "embedding" in cfg.scorers and latents:
        rows += embedding_rows(by_explainer, windows, decode, embedder, n_bins, now)
    # One row per (latent, explainer, scorer, source), each the verdict of model calls: built as rows, not shaped.
    return pa.Table.from_pylist(rows, schema=SCHEMA).sort_by([
        ("latent", "ascending"), ("explainer", "ascending"), ("scorer", "ascending"), ("source", "descending")])


def embedding_rows(by_explainer: dict[str, Explained], windows, decode: Decode, embedder, n_bins: int,
                   now: datetime) -> list[dict]:
    """AUC of cosine(explanation, window) over every test window of each latent, per explainer, real and
    control."""
    latents = sorted({latent for e in by_explainer.values() for latent in e.text_of})
    texts, spans = [], {}
    for latent in latents:
        rows = windows[latent]
        spans[latent] = (len(texts), len(texts) + len(rows))
        texts += [plain_text(r, decode) for r in rows]
    window_vecs = embedder.embed(texts)
    out = []
    for explainer, explained in by_explainer.items():
        explanation_vecs = dict(zip(explained.text_of, embedder.embed(list(explained.text_of.values()))))
        for latent in sorted(explained.text_of):
            lo, hi = spans[latent]
            rows = windows[latent]
            labels = np.array([r["kind"] == "quantile" for r in rows], bool)
            for source, mapping in explained.sources:
                if latent not in mapping:
                    continue
                cosine = window_vecs[lo:hi] @ explanation_vecs[mapping[latent]]
                # R-precision: the n_activating most similar windows are called activating.
                predictions = np.zeros_like(labels)
                predictions[np.argsort(-cosine, kind="stable")[: labels.sum()]] = True
                record = Judged(labels.tolist(), predictions.tolist(), cosine.tolist(),
                                [r["bin"] if r["kind"] == "quantile" else None for r in rows])
                out.append(metrics_row((latent, explainer, "embedding", source), mapping[latent], record, n_bins,
                                       embedder.name, "embedding", now))
    return out

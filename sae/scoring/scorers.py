"""Scoring explanations on each latent's held-out test windows, which the explainer never saw.

- detection: the LLM reads the explanation and unmarked windows (activating from every quantile bin, and
  silent ones) and says for each whether the latent fires in it;
- fuzzing: the LLM reads the explanation and marked windows and says whether the marks fit: activating
  windows marked at their truly active tokens are correct; silent windows (and, optionally, activating
  windows marked at inactive tokens) with as many tokens marked at random are not;
- embedding: the AUC of cosine(explanation, window) between activating and silent windows; its hard
  predictions take the top n_activating windows by cosine as positive (R-precision), no threshold to tune;
- surprisal: the AUC of how much the explanation, read before a window, lowers the LLM's loss on it, between
  activating and silent windows (hard predictions by R-precision, as for embedding);
- intruder, simulation, intervention: one module each (sae/scoring/intruder.py, simulation.py, intervention.py),
  each building its rows from a `Scoring` (request_scorers is the registry).

Detection and fuzzing answers are constrained to {"answers": [...]} on every backend that decodes by a
format, so every answer reads; where the backend gives log-probs, P(1) at each answer digit gives the AUC.
Metrics that nothing could define (no answer read, no window of a class or bin) are NULL.

Every latent is also scored with another latent's explanation (a fixed, seeded derangement, `source` =
control); a scorer whose control is not near chance measures something else than the explanation.

Every explainer present in the partition's explanations (the LLM, the token baseline, a planted latent's truth)
is scored on the same latents and the same windows, so their scores compare pairwise; each explainer's control
deranges its own explanations among the latents it explained.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import polars as pl
import pyarrow as pa

from ..config import ANSWER_SCORERS, ScoreConfig
from ..explanations.explainer import LLM, Decode
from ..frames import frame
from ..llm.base import ChatRequest, Completion, LLMClient, SamplingParams, ScoredText, TokenLogprobs
from ..prompts import (Window, answer_format, clean_piece, marked_text, parse_answers, scorer_messages,
                       scorer_version, surprisal_contexts, surprisal_version)
from .metrics import classification_metrics, roc_auc

SCHEMA = pa.schema([
    ("latent", pa.int32()),
    ("explainer", pa.string()),  # which explainer's explanations were scored: llm | tokens | truth
    ("scorer", pa.string()),  # one of config.SCORERS
    ("source", pa.string()),  # real: the latent's own explanation; control: another latent's (see each scorer)
    ("explanation_latent", pa.int32()),  # whose explanation was scored (null: the scorer reads none)
    ("balanced_accuracy", pa.float32()),
    ("f1", pa.float32()),
    ("precision", pa.float32()),
    ("recall", pa.float32()),
    ("accuracy", pa.float32()),
    ("auc", pa.float32()),  # null where the backend gave no probabilities
    ("bin_accuracy", pa.list_(pa.float32())),  # accuracy on activating windows per quantile bin (null: none)
    ("silent_accuracy", pa.float32()),  # accuracy on silent windows
    ("n_examples", pa.int32()),  # windows with an answer
    ("n_activating", pa.int32()),
    ("n_failures", pa.int32()),  # windows whose answer could not be read
    ("failed_answers", pa.list_(pa.string())),  # the unreadable replies, raw
    ("chance", pa.float32()),  # what the scorer's primary metric (PRIMARY_METRIC) is for a judge that knows nothing
    ("correlation", pa.float32()),  # simulation: Pearson r of predicted and true activations over every token
    ("correlation_activating", pa.float32()),  # simulation: the same over the activating windows' tokens alone
    ("strength_accuracy", pa.list_(pa.float32())),  # intervention: accuracy per steering strength, in config order
    ("n_requests", pa.int32()),  # LLM requests made for the row (null: the scorer asks no LLM to answer)
    ("prompt_tokens", pa.int64()),  # their prompt and generated tokens, as the backend counts them
    ("completion_tokens", pa.int64()),
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
class Usage:
    """The LLM requests behind one scores row, and their tokens as the backend counted them."""

    n_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, completion: Completion) -> None:
        self.n_requests += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens

    def columns(self) -> dict:
        return {"n_requests": self.n_requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


@dataclass
class Judged:
    """Predictions for one (latent, explainer, scorer, source)."""

    labels: list[bool] = field(default_factory=list)
    predictions: list[bool] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)  # P(yes), where the backend gave log-probs
    bins: list[int | None] = field(default_factory=list)
    failures: int = 0
    failed_answers: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


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


# Most likely tokens asked for at each answer position: enough that both digits are usually among them
# (the model's raw distribution there also holds list-like tokens such as "2" or "..."), and OpenAI's limit.
TOP_LOGPROBS = 20


def _digit(text: str) -> str:
    return text.strip(" ,[]")  # a tokenizer may fold the list's punctuation into the digit's token


def yes_probabilities(logprobs: list[TokenLogprobs] | None, n: int) -> list[float] | None:
    """P(1) / (P(0) + P(1)) at each of the first n answer digits of a reply (as `parse_answers` reads them),
    from the top log-probabilities there: the choice that constrained decoding leaves the model. A digit
    missing from the top ones counts as improbable. None unless the reply has n digit tokens with 0 or 1
    among their alternatives."""
    if not logprobs:
        return None
    probs = []
    for token in logprobs:
        if _digit(token.token) not in ("0", "1") or len(probs) == n:
            continue
        top = {}
        for text, logprob in token.top.items():
            top.setdefault(_digit(text), logprob)
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
        # Constrained: on backends that decode by the format every reply reads (max_tokens fits the longest).
        output_format = answer_format(len(chunk))
        constrained = dataclasses.replace(sampling, output_format=output_format,
                                          max_tokens=max(sampling.max_tokens, output_format.max_length + 1))
        batches.append(Batch(key, chunk, ChatRequest(messages, constrained)))
    return batches


def judge(batches: list[Batch], completions: list[Completion], judged: dict) -> None:
    for batch, done in zip(batches, completions):
        record = judged.setdefault(batch.key, Judged())
        record.usage.add(done)
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


def defined(value: float) -> float | None:
    """A metric as the lake stores it: NULL, never NaN, where it is not defined."""
    return None if value is None or math.isnan(value) else float(value)


def blank_row(key: tuple[int, str, str, str], explanation_latent: int | None, scorer_model: str,
              prompt_version: str, now: datetime, chance: float) -> dict:
    """A scores row with its identity and every metric NULL, for a scorer to fill in."""
    latent, explainer, scorer, source = key
    return {name: None for name in SCHEMA.names} | {
        "latent": latent, "explainer": explainer, "scorer": scorer, "source": source,
        "explanation_latent": explanation_latent, "n_examples": 0, "n_activating": 0, "n_failures": 0,
        "failed_answers": [], "chance": chance, "scorer_model": scorer_model, "prompt_version": prompt_version,
        "created_at": now}


def metrics_row(key: tuple[int, str, str, str], explanation_latent: int, record: Judged, n_bins: int,
                scorer_model: str, prompt_version: str, now: datetime) -> dict:
    """The scores row of one (latent, explainer, scorer, source); NULL wherever nothing could be judged (no
    answers, no window of a class or bin, no probabilities)."""
    labels, preds = np.array(record.labels, bool), np.array(record.predictions, bool)
    metrics = {name: defined(value) for name, value in classification_metrics(labels, preds).items()}
    probs = np.array(record.probabilities, dtype=np.float64)
    auc = roc_auc(labels, probs) if probs.size and not np.isnan(probs).any() else None
    correct = labels == preds
    bins = np.array([-1 if b is None else b for b in record.bins], dtype=np.int64)
    bin_accuracy = [float(correct[(bins == b) & labels].mean()) if ((bins == b) & labels).any() else None
                    for b in range(n_bins)]
    silent = ~labels & (bins < 0)
    usage = record.usage.columns() if record.usage.n_requests else {}
    return blank_row(key, explanation_latent, scorer_model, prompt_version, now, chance=0.5) | {
        **metrics, "auc": defined(auc), "bin_accuracy": bin_accuracy,
        "silent_accuracy": float(correct[silent].mean()) if silent.any() else None,
        "n_examples": int(labels.size), "n_activating": int(labels.sum()), "n_failures": record.failures,
        "failed_answers": record.failed_answers, **usage}


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


def llm_judged_latents(latents: list[int], cap: int | None, seed: int) -> list[int]:
    """The scored latents that the scorer LLM also judges (detection, fuzzing, surprisal): all of them, or at
    most `cap` drawn with the seed. The LLM scorers cost a model call per window batch, explainer and source,
    the embedding scorer almost nothing, so a small machine can embed-score every latent and LLM-score a few."""
    if cap is None or cap >= len(latents):
        return latents
    return sorted(random.Random(f"{seed}/llm-judged").sample(latents, cap))


def judged_latents_of(explanations: pa.Table, cfg: ScoreConfig, seed: int) -> list[int]:
    """The latents of a partition that the scorer LLM judges (as score_partition picks them)."""
    latents = sorted({latent for e in explained_by(explanations, cfg, seed).values() for latent in e.text_of})
    return llm_judged_latents(latents, cfg.llm_n_latents, seed)


def explained_by(explanations: pa.Table, cfg: ScoreConfig, seed: int) -> dict[str, Explained]:
    """Per explainer present in the partition (parsed rows of the scored latents): texts, real and control."""
    parsed = frame(explanations).filter(pl.col("parsed"))
    latents = scored_latents(parsed, cfg.n_latents, seed)
    return explained_per_explainer(parsed.filter(pl.col("latent").is_in(latents)), cfg.control, seed)


def explained_per_explainer(parsed: pl.DataFrame, control: bool, seed: int) -> dict[str, Explained]:
    """Per explainer of parsed explanation rows: its texts, and the real and (with `control`) deranged sources."""
    out = {}
    for (explainer,), rows in sorted(parsed.partition_by("explainer", as_dict=True).items()):
        text_of = dict(zip(rows["latent"].to_list(), rows["explanation"].to_list()))
        sources = [("real", {latent: latent for latent in text_of})]
        if control:
            sources.append(("control", derangement(sorted(text_of), seed)))
        out[explainer] = Explained(text_of, sources)
    return out


@dataclass
class Scoring:
    """What a scorer of one partition reads: the explanations, the latents and their test windows, the settings
    and the scorer LLM."""

    by_explainer: dict[str, Explained]
    latents: list[int]  # the scored latents of the partition
    judged_latents: list[int]  # those the scorer LLM judges (in a shard: those of its range)
    windows: dict[int, list[dict]]  # test windows by latent (in a shard: its range's, and the intruder's pool)
    cfg: ScoreConfig
    decode: Decode | None  # None in a shard on its way to a worker, which sets its own
    seed: int
    n_bins: int
    fuzz_threshold: float
    now: datetime
    client: LLMClient | None
    progress: bool
    batch_requests: int
    generations: pa.Table | None = None  # intervention: the partition's steered_generations
    output_explainers: dict[str, Explained] = field(default_factory=dict)  # intervention only: output-side ones
    own: list[int] | None = None  # the scored latents whose rows it makes (None: all of `latents`)

    def __post_init__(self):
        if self.own is None:
            self.own = self.latents

    def of_range(self, first: int, end: int) -> Scoring:
        """The part of this partition's scoring that makes the rows of latents [first, end), without client or
        decoder (a worker sets its own). It keeps what the whole partition decides (scored and judged latents,
        controls, texts); the windows are the range's, with, for the intruder, the activating test windows of
        every scored latent (its intruders come from anywhere in the partition)."""
        own = [latent for latent in self.latents if first <= latent < end]
        pool = {latent: [r for r in rows if r["kind"] == "quantile"] for latent, rows in self.windows.items()} \
            if "intruder" in self.cfg.scorers else {}
        return dataclasses.replace(
            self, own=own, judged_latents=[latent for latent in self.judged_latents if first <= latent < end],
            windows=defaultdict(list, {**pool, **{latent: self.windows[latent] for latent in own}}), client=None,
            decode=None)

    def need_client(self, scorer: str) -> LLMClient:
        if self.client is None:
            raise ValueError(f"the {scorer} scorer needs an LLM client")
        return self.client

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        """Every request answered, handed to the backend `batch_requests` at a time."""
        return self.in_batches(self.client.complete, requests)

    def in_batches(self, call: Callable[..., list], requests: list) -> list:
        """`call` (a client method taking requests and `progress`) over `batch_requests` requests at a time, so
        a crash loses little; the results in the order of `requests`."""
        out = []
        for first in range(0, len(requests), self.batch_requests):
            out += call(requests[first : first + self.batch_requests], progress=self.progress)
        return out


def request_scorers() -> dict:
    """The scorers that build their own rows from a `Scoring` (one module each), by name."""
    from .intervention import intervention_rows
    from .intruder import intruder_rows
    from .simulation import simulation_rows

    return {"intruder": intruder_rows, "simulation": simulation_rows, "intervention": intervention_rows}


def score_partition(examples: pa.Table, explanations: pa.Table, cfg: ScoreConfig, decode: Decode, seed: int,
                    n_bins: int, fuzz_threshold: float, client: LLMClient | None = None, embedder=None,
                    progress: bool = False, batch_requests: int = 512, generations: pa.Table | None = None,
                    output_explanations: pa.Table | None = None) -> pa.Table:
    """Scores of every parsed explanation of one partition, per explainer, real and (if configured) control; the
    `output_explanations` (sae/scoring/output_explanations.py) by the intervention scorer alone."""
    return score_rows(partition_scoring(examples, explanations, cfg, decode, seed, n_bins, fuzz_threshold, client,
                                        progress, batch_requests, generations, output_explanations), embedder)


def partition_scoring(examples: pa.Table, explanations: pa.Table, cfg: ScoreConfig, decode: Decode | None, seed: int,
                      n_bins: int, fuzz_threshold: float, client: LLMClient | None = None, progress: bool = False,
                      batch_requests: int = 512, generations: pa.Table | None = None,
                      output_explanations: pa.Table | None = None) -> Scoring:
    """What scoring one partition reads, drawn over the whole partition: the scored and judged latents (samples
    of all of them), each explainer's controls (a derangement across all its latents), and the test windows."""
    by_explainer = explained_by(explanations, cfg, seed)
    latents = sorted({latent for e in by_explainer.values() for latent in e.text_of})
    scoring = Scoring(by_explainer, latents, llm_judged_latents(latents, cfg.llm_n_latents, seed),
                      test_windows(examples, latents), cfg, decode, seed, n_bins, fuzz_threshold,
                      datetime.now(timezone.utc), client, progress, batch_requests, generations)
    if output_explanations is not None:
        scoring.output_explainers = explained_per_explainer(frame(output_explanations).filter(pl.col("parsed")),
                                                            cfg.control, seed)
    return scoring


def score_rows(s: Scoring, embedder=None) -> pa.Table:
    """The scores rows of the latents `s.own`, sorted by latent, explainer, scorer and source (real first)."""
    cfg, rows = s.cfg, []
    llm_scorers = [scorer for scorer in cfg.scorers if scorer in ANSWER_SCORERS]
    if llm_scorers and s.own:
        if s.client is None:
            raise ValueError(f"scorers {llm_scorers} need an LLM client")
        sampling = SamplingParams(max_tokens=cfg.max_tokens,
                                  top_logprobs=TOP_LOGPROBS if s.client.supports_logprobs else 0)
        batches = []
        for latent in s.judged_latents:
            # The same windows, in the same order, for every explainer and source of a latent.
            rng = random.Random(f"{s.seed}/{latent}")
            activating, silent = sample_for_llm(s.windows[latent], cfg, rng)
            items = {"detection": detection_items(activating, silent, s.decode),
                     "fuzzing": fuzzing_items(activating, silent, s.decode, s.fuzz_threshold,
                                              cfg.fuzz_wrong_in_activating, rng)}
            for scorer in llm_scorers:
                for explainer, explained in s.by_explainer.items():
                    for source, mapping in explained.sources:
                        if latent in mapping:
                            batches += llm_batches((latent, explainer, scorer, source),
                                                   explained.text_of[mapping[latent]], items[scorer], cfg,
                                                   random.Random(f"{s.seed}/{latent}/{scorer}"), sampling)
        judged: dict = {}
        judge(batches, s.complete([b.request for b in batches]), judged)
        for key, record in sorted(judged.items()):
            latent, explainer, scorer, source = key
            mapping = dict(s.by_explainer[explainer].sources)[source]
            rows.append(metrics_row(key, mapping[latent], record, s.n_bins, s.client.model, scorer_version(scorer),
                                    s.now))
    if "embedding" in cfg.scorers and s.own:
        rows += embedding_rows(s.by_explainer, s.own, s.windows, s.decode, embedder, s.n_bins, s.now)
    if "surprisal" in cfg.scorers and s.own:
        rows += surprisal_rows(s.by_explainer, s.judged_latents, s.windows, cfg, s.decode, s.client, s.seed, s.n_bins,
                               s.now, s.progress, s.batch_requests)
    for name, scorer_rows in request_scorers().items():
        if name in cfg.scorers and s.own:
            rows += scorer_rows(s)
    # One row per (latent, explainer, scorer, source), each the verdict of model calls: built as rows, not shaped.
    return pa.Table.from_pylist(rows, schema=SCHEMA).sort_by([
        ("latent", "ascending"), ("explainer", "ascending"), ("scorer", "ascending"), ("source", "descending")])


def ranked(labels: np.ndarray, values: np.ndarray, bins: list[int | None]) -> Judged:
    """Windows judged by a score: R-precision calls the n_activating highest activating (no threshold to
    tune), and the score itself gives the AUC."""
    predictions = np.zeros_like(labels)
    predictions[np.argsort(-values, kind="stable")[: labels.sum()]] = True
    return Judged(labels.tolist(), predictions.tolist(), values.tolist(), bins)


def embedding_rows(by_explainer: dict[str, Explained], latents: list[int], windows, decode: Decode, embedder,
                   n_bins: int, now: datetime) -> list[dict]:
    """AUC of cosine(explanation, window) over every test window of each of `latents`, per explainer, real and
    control."""
    texts, spans = [], {}
    for latent in latents:
        rows = windows[latent]
        spans[latent] = (len(texts), len(texts) + len(rows))
        texts += [plain_text(r, decode) for r in rows]
    window_vecs = embedder.embed(texts)
    out = []
    for explainer, explained in by_explainer.items():
        explanation_vecs = dict(zip(explained.text_of, embedder.embed(list(explained.text_of.values()))))
        for latent in sorted(explained.text_of.keys() & set(latents)):
            lo, hi = spans[latent]
            rows = windows[latent]
            labels = np.array([r["kind"] == "quantile" for r in rows], bool)
            for source, mapping in explained.sources:
                if latent not in mapping:
                    continue
                cosine = window_vecs[lo:hi] @ explanation_vecs[mapping[latent]]
                record = ranked(labels, cosine, [r["bin"] if r["kind"] == "quantile" else None for r in rows])
                out.append(metrics_row((latent, explainer, "embedding", source), mapping[latent], record, n_bins,
                                       embedder.name, "embedding", now))
    return out


def window_text(row: dict, decode: Decode) -> str:
    """The window as running text (line breaks kept), for a model to read rather than a prompt to show."""
    return "".join(decode(row["tokens"])).strip()


def surprisal_rows(by_explainer: dict[str, Explained], latents: list[int], windows, cfg: ScoreConfig,
                   decode: Decode, client: LLMClient | None, seed: int, n_bins: int, now: datetime, progress: bool,
                   batch_requests: int) -> list[dict]:
    """Surprisal (Paulo et al.): per window, how much the explanation read before it lowers the scorer model's
    loss on it, NLL(window | plain context) - NLL(window | explanation); the score is the AUC of that reduction
    between activating and silent windows (the same windows detection judges), per explainer, real and control.

    The NLL is the mean over all of the window's tokens, in the scorer model's tokenization: silent windows
    have no activating tokens, and both classes must be measured alike; the scorer's tokens also need not be
    the subject model's, so activating positions would not carry over."""
    if client is None:
        raise ValueError("the surprisal scorer needs an LLM client")
    chosen: dict[int, tuple[list[dict], list[str]]] = {}
    for latent in latents:
        activating, silent = sample_for_llm(windows[latent], cfg, random.Random(f"{seed}/{latent}"))
        shown = [(row, window_text(row, decode)) for row in activating + silent]
        shown = [(row, text) for row, text in shown if text]
        chosen[latent] = ([row for row, _ in shown], [text for _, text in shown])
    requests: dict[ScoredText, None] = {}  # each distinct (context, window) once, in order
    for explained in by_explainer.values():
        for latent in sorted(chosen.keys() & explained.text_of.keys()):
            for text in chosen[latent][1]:
                for _, mapping in explained.sources:
                    if latent in mapping:
                        for context in surprisal_contexts(explained.text_of[mapping[latent]]):
                            requests.setdefault(ScoredText(context, text))
    ordered = list(requests)
    mean_logprob = {}
    for first in range(0, len(ordered), batch_requests):
        part = ordered[first : first + batch_requests]
        for request, logprobs in zip(part, client.prompt_logprobs(part, progress=progress)):
            mean_logprob[request] = float(np.mean(logprobs))
    out = []
    for explainer, explained in by_explainer.items():
        for latent in sorted(chosen.keys() & explained.text_of.keys()):
            rows, texts = chosen[latent]
            labels = np.array([row["kind"] == "quantile" for row in rows], bool)
            bins = [row["bin"] if row["kind"] == "quantile" else None for row in rows]
            for source, mapping in explained.sources:
                if latent not in mapping:
                    continue
                plain, with_explanation = surprisal_contexts(explained.text_of[mapping[latent]])
                reduction = np.array([mean_logprob[ScoredText(with_explanation, text)]
                                      - mean_logprob[ScoredText(plain, text)] for text in texts])
                out.append(metrics_row((latent, explainer, "surprisal", source), mapping[latent],
                                       ranked(labels, reduction, bins), n_bins, client.prompt_logprobs_model,
                                       surprisal_version(), now))
    return out

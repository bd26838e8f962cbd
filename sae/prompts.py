"""Every prompt the pipeline sends to an LLM, in one place, each with a stable version hash.

The shared instructions come first in every prompt so a prefix cache (vLLM's, llama.cpp's) reuses them
across latents; what changes per latent comes last. Answers are read from a fixed marker line; an answer
without it is kept raw and flagged by the caller, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import PromptConfig
from .llm.base import OutputFormat

OPEN, CLOSE = "<<", ">>"
ANSWER_MARKER = "Explanation:"


@dataclass(frozen=True)
class Window:
    """One example window as the prompt shows it: token texts and their activations."""

    pieces: tuple[str, ...]
    acts: tuple[float, ...]


def version(*texts: str) -> str:
    """A short hash of a prompt's fixed text: it changes exactly when the prompt does."""
    return hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:12]


def clean_piece(piece: str) -> str:
    """Token text as it reads inside a one-line excerpt: line breaks shown, marker characters defused."""
    return piece.replace("\r", "").replace("\n", "⏎").replace("<<", "‹‹").replace(">>", "››")


def marked_text(window: Window, threshold: float) -> tuple[str, list[tuple[str, float]]]:
    """The window's text with runs of active tokens wrapped <<like this>>, and the marked spans with their
    peak activation. A token is active where its activation is > 0 and > `threshold` x the window's peak."""
    acts = np.asarray(window.acts, dtype=np.float32)
    peak = float(acts.max()) if acts.size else 0.0
    active = (acts > 0) & (acts > threshold * peak)
    out, spans, run, run_peak = [], [], [], 0.0
    for piece, act, on in zip(window.pieces, acts, active):
        piece = clean_piece(piece)
        if on:
            run.append(piece)
            run_peak = max(run_peak, float(act))
            continue
        if run:
            out.append(f"{OPEN}{''.join(run)}{CLOSE}")
            spans.append(("".join(run).strip(), run_peak))
            run, run_peak = [], 0.0
        out.append(piece)
    if run:
        out.append(f"{OPEN}{''.join(run)}{CLOSE}")
        spans.append(("".join(run).strip(), run_peak))
    return "".join(out).strip(), spans


# explainer ----------------------------------------------------------------------------------------------

EXPLAINER_SYSTEM = """You are studying one feature inside a language model. You get short excerpts of text \
in which the feature is active; the tokens where it fires are wrapped in << and >>. Work out what the marked \
tokens have in common: a word or family of words, a topic, a grammatical role, or a pattern in the text just \
before them. Answer with one short phrase that would let someone predict where the feature fires. Do not \
repeat the excerpts. Finish with a line that starts with "Explanation:" followed by your phrase."""

EVIDENCE_ADDENDUM = """ After the excerpts, you also get the tokens the feature fires on most often in a large \
text, with how many times, and the tokens it makes the model more likely to write next. Begin your phrase with \
the two commonest of those tokens in quotes, then say in a few words what they share. Each feature is different: never \
reuse an earlier answer."""

CONTRASTIVE_ADDENDUM = """ You also get excerpts in which the feature stays silent; use them to tell the \
feature apart from things that merely look related."""

ACTIVATIONS_ADDENDUM = """ After each excerpt, the marked spans are listed with the feature's strength \
there, from 1 (weak) to 10 (its strongest)."""

COT_ADDENDUM = """ Before the final line, write two or three brief observations about the marked tokens and \
their surroundings, each on its own line starting with "-"."""

FREQUENT_LABEL = "Fires most on:"
PROMOTED_LABEL = "Makes likely next:"


@dataclass(frozen=True)
class Evidence:
    """What the prompt says about a latent beyond its excerpts: the tokens it fires on most often over the
    corpus, as (text, firings), commonest first; and the tokens its decoder direction promotes most."""

    frequent: tuple[tuple[str, int], ...] = ()
    promoted: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkedExample:
    """An earlier turn of the conversation: excerpts of an invented feature, its evidence and the answer."""

    excerpts: tuple[str, ...]
    evidence: Evidence
    answer: str
    notes: str  # the observations of the chain-of-thought prompt


# The pool the worked examples are drawn from, two per prompt, rotated per attempt: a small model tends to copy
# the last example it saw, and a copy is caught and asked again with others (sae/explanations/copies.py). The
# first attempt shows every latent the same two, so that the backends' prefix caches (llama.cpp's slots, vLLM's)
# reuse the instructions and the examples across latents. Every answer has one form, the two commonest tokens in
# quotes and then what they share: shown answers that opened with a description, SmolLM2 paraphrased its
# excerpts and named a planted latent's word in 3 of 8; shown this form, in 7 of 8, and in 8 of 8 families held
# out from the tuning. Order matters: on the demo's layers.3/topk-x4, shown the cities and "ing" examples first,
# SmolLM2 copied one for 20 of 48 latents, while the 18 latents later shown the music and units examples copied
# neither; so those two come first.
EXAMPLE_POOL = (
    WorkedExample(
        ("the <<album>> reached number two", "their second <<single>> was released", "a <<song>> about the war"),
        Evidence((("album", 33), ("song", 21), ("single", 15), ("track", 6)), ("was", "by", "released")),
        '"album" and "song": names of music releases',
        "- the marked words are kinds of recordings\n- the texts are about bands"),
    WorkedExample(
        ("a road of 12 <<km>> through the hills", "the tower is 300 <<metres>> tall", "about 40 <<miles>> north"),
        Evidence((("km", 29), ("metres", 18), ("miles", 16), ("feet", 9)), ("long", "high", "(")),
        '"km" and "metres": units of length after a number',
        "- each marked word is a unit of distance\n- a number comes just before it"),
    WorkedExample(
        ("he did <<not>> want to leave", "it was <<never>> found again", "we <<don't>> know yet"),
        Evidence((("not", 52), ("never", 14), ("n't", 11), ("no", 9)), ("be", "have", "only")),
        '"not" and "never": words that negate a verb',
        "- the marked words deny something\n- they come before a verb"),
    WorkedExample(
        ("a blade of <<iron>> with a <<bronze>> hilt", "the <<copper>> mines closed in 1912", "rings of <<gold>>"),
        Evidence((("iron", 38), ("copper", 25), ("gold", 19), ("bronze", 7)), ("ore", "and", "mines")),
        '"iron" and "copper": names of metals',
        "- every marked word is a metal\n- the texts are about tools and mining"),
    WorkedExample(
        ("the delegation flew on to <<Paris>>, where talks resumed",
         "exports through <<Rotterdam>> and <<Antwerp>> fell sharply", "she was born in <<Lisbon>> in 1921"),
        Evidence((("Paris", 41), ("London", 30), ("Rome", 12), ("Lisbon", 6)), ("France", "where", "Italy")),
        '"Paris" and "London": cities of Europe',
        "- every marked word is a city\n- all the cities are in Europe"),
    WorkedExample(
        ("the river kept ris<<ing>> through the night", "they were still argu<<ing>> about the fee",
         "after years of train<<ing>>, he"),
        Evidence((("ing", 95), ("ings", 7)), ("the", "to", "a")),
        '"ing" and "ings": the suffix that completes a verb',
        '- the marked token is always "ing"\n- it ends a verb split into pieces'),
)
EXAMPLES_SHOWN = 2


def example_rotation(attempt: int) -> tuple[WorkedExample, ...]:
    """The worked examples shown at an attempt (0 first): consecutive pool entries, shifted by EXAMPLES_SHOWN
    per attempt so that a retry shows none of the examples of the attempt before."""
    first = (attempt * EXAMPLES_SHOWN) % len(EXAMPLE_POOL)
    return tuple(EXAMPLE_POOL[(first + i) % len(EXAMPLE_POOL)] for i in range(EXAMPLES_SHOWN))


def evidence_lines(evidence: Evidence) -> list[str]:
    lines = []
    if evidence.frequent:
        lines.append(f"{FREQUENT_LABEL} " + ", ".join(f'"{text}" {n} times' for text, n in evidence.frequent))
    if evidence.promoted:
        lines.append(f"{PROMOTED_LABEL} " + ", ".join(f'"{text}"' for text in evidence.promoted))
    return lines


def explainer_messages(windows: Sequence[Window], cfg: PromptConfig, silent: Sequence[Window] = (),
                       max_act: float | None = None, evidence: Evidence | None = None,
                       examples: Sequence[WorkedExample] = EXAMPLE_POOL[:EXAMPLES_SHOWN]) -> tuple[tuple[str, str], ...]:
    """The chat for one latent: instructions, worked examples, then this latent's excerpts (and its evidence,
    where `evidence` is given)."""
    system = EXPLAINER_SYSTEM
    if evidence is not None:
        system += EVIDENCE_ADDENDUM
    if cfg.contrastive:
        system += CONTRASTIVE_ADDENDUM
    if cfg.show_activations:
        system += ACTIVATIONS_ADDENDUM
    if cfg.chain_of_thought:
        system += COT_ADDENDUM
    messages = [("system", system)]
    for example in examples:
        user = [f"Excerpt {i}: {text}" for i, text in enumerate(example.excerpts, 1)]
        if evidence is not None:
            user += evidence_lines(example.evidence)
        answer = f"{ANSWER_MARKER} {example.answer}"
        messages.append(("user", "\n".join(user)))
        messages.append(("assistant", f"{example.notes}\n{answer}" if cfg.chain_of_thought else answer))
    scale = max_act or max((max(w.acts) for w in windows), default=0.0) or 1.0
    lines = []
    for i, window in enumerate(windows, 1):
        text, spans = marked_text(window, cfg.highlight_threshold)
        lines.append(f"Excerpt {i}: {text}")
        if cfg.show_activations and spans:
            strengths = ", ".join(f"{span} ({max(1, round(10 * act / scale))})" for span, act in spans)
            lines.append(f"Strength: {strengths}")
    if cfg.contrastive and silent:
        lines.append("Excerpts where the feature is silent:")
        lines.extend(f"Silent {i}: {marked_text(w, 1.0)[0]}" for i, w in enumerate(silent, 1))
    if evidence is not None:
        lines += evidence_lines(evidence)
    messages.append(("user", "\n".join(lines)))
    return tuple(messages)


def explainer_version(cfg: PromptConfig) -> str:
    """The version of the explainer prompt as configured (its text and the options that shape it)."""
    return version(EXPLAINER_SYSTEM, EVIDENCE_ADDENDUM, CONTRASTIVE_ADDENDUM, ACTIVATIONS_ADDENDUM, COT_ADDENDUM,
                   FREQUENT_LABEL, PROMOTED_LABEL, repr(EXAMPLE_POOL), str(EXAMPLES_SHOWN),
                   repr(sorted(vars(cfg).items())))


_ANSWER = re.compile(r"^\W*explanation\W*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def parse_explanation(completion: str) -> str | None:
    """The text after the last "Explanation:" marker, trimmed of markup and of quotes around the whole answer
    (an answer that quotes tokens, such as `"he" and "his": ...`, keeps its quotes); None if absent or empty."""
    found = _ANSWER.findall(completion)
    if not found:
        return None
    answer = found[-1].strip().strip("*_` ").strip()
    quote = answer[:1]
    if len(answer) >= 2 and quote in "\"'" and answer[-1] == quote and quote not in answer[1:-1]:
        answer = answer[1:-1].strip()
    return answer or None


# scorers ------------------------------------------------------------------------------------------------

DETECTION_SYSTEM = """You test an explanation of a feature inside a language model. You get the explanation \
and numbered text excerpts. For each excerpt, decide whether the feature is active anywhere in it, judging \
only by the explanation. Reply with JSON only: {"answers": [...]} with one number per excerpt, in order, 1 if \
the feature is active and 0 if not."""

FUZZING_SYSTEM = """You test an explanation of a feature inside a language model. You get the explanation \
and numbered text excerpts in which some tokens are wrapped in << and >>. For each excerpt, decide whether the \
marked tokens are the ones the explanation describes. Reply with JSON only: {"answers": [...]} with one number \
per excerpt, in order, 1 if the marking fits the explanation and 0 if not."""

# The worked example has as many excerpts as the real batch (taken in order, cycling), so its answer shows
# a list of the right length: small models copy the example's format, and a list of another length
# cannot be read.
EXAMPLE_EXPLANATION = "words for sea birds"
DETECTION_POOL = (
    ("gulls and terns circled above the harbour", 1),
    ("the committee approved the budget on Monday", 0),
    ("a colony of puffins nests on the cliffs", 1),
    ("the train to Leeds was delayed again", 0),
    ("she painted the kitchen a pale green", 0),
    ("an albatross can glide for hours", 1),
    ("the court adjourned until next week", 0),
    ("cormorants dried their wings on the rocks", 1),
)
FUZZING_POOL = (
    ("<<gulls>> and <<terns>> circled above the harbour", 1),
    ("the committee <<approved>> the budget on Monday", 0),
    ("a colony of puffins nests <<on>> the cliffs", 0),
    ("an <<albatross>> can glide for hours", 1),
    ("the train <<to>> Leeds was delayed again", 0),
    ("<<cormorants>> dried their wings on the rocks", 1),
    ("she painted the <<kitchen>> a pale green", 0),
    ("a <<pelican>> scooped up the fish", 1),
)
SCORERS = {"detection": (DETECTION_SYSTEM, DETECTION_POOL), "fuzzing": (FUZZING_SYSTEM, FUZZING_POOL)}


def scorer_messages(kind: str, explanation: str, excerpts: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """A detection or fuzzing prompt: instructions and a worked example first (shared by every latent with
    the same batch size), then the explanation and the excerpts (already marked for fuzzing)."""
    system, pool = SCORERS[kind]
    shown = [pool[i % len(pool)] for i in range(len(excerpts))]
    example = "\n".join(f"Excerpt {i}: {text}" for i, (text, _) in enumerate(shown, 1))
    answer = format_answers([bool(label) for _, label in shown])
    body = "\n".join(f"Excerpt {i}: {text}" for i, text in enumerate(excerpts, 1))
    return (("system", system), ("user", f"Explanation: {EXAMPLE_EXPLANATION}\n{example}"),
            ("assistant", answer), ("user", f"Explanation: {explanation}\n{body}"))


def scorer_version(kind: str) -> str:
    system, pool = SCORERS[kind]
    return version(system, EXAMPLE_EXPLANATION, repr(pool), format_answers([True, False]))


ANSWERS_OPEN, ANSWER_SEPARATOR, ANSWERS_CLOSE = '{"answers": [', ", ", "]}"


def format_answers(answers: Sequence[bool]) -> str:
    """A scorer reply as the prompt's worked example shows it and constrained decoding produces it."""
    return ANSWERS_OPEN + ANSWER_SEPARATOR.join("1" if a else "0" for a in answers) + ANSWERS_CLOSE


def answer_format(n: int) -> OutputFormat:
    """The only replies a constrained backend may give to a scorer prompt of n excerpts: n digits 0/1 in the
    worked example's JSON, character for character."""
    digits = [("0", "1")] * n
    slots = [(ANSWERS_OPEN,), digits[0]]
    for digit in digits[1:]:
        slots += [(ANSWER_SEPARATOR,), digit]
    schema = {"type": "object", "additionalProperties": False, "required": ["answers"],
              "properties": {"answers": {"type": "array", "items": {"type": "integer", "enum": [0, 1]},
                                         "minItems": n, "maxItems": n}}}
    return OutputFormat(f"answers_{n}", tuple(slots) + ((ANSWERS_CLOSE,),), json.dumps(schema, sort_keys=True))


_LIST = re.compile(r"\[([^\[\]]*)\]")
_YES, _NO = {"1", "yes", "true", "y"}, {"0", "no", "false", "n"}


def parse_answers(completion: str, n: int) -> list[bool] | None:
    """The n yes/no answers of a scorer reply: the last bracketed list (or a list left open at the end)
    whose first n entries are each 1/0, yes/no or true/false. A constrained reply is {"answers": [...]}
    exactly (a server that takes only the JSON schema may space it otherwise); the lenient reading is for
    servers that ignore the constraint. Entries beyond the n-th are ignored: unconstrained small models run
    on past the end of the list, and the first n still answer the n excerpts in order. None when it cannot
    be read."""
    candidates = _LIST.findall(completion)
    unclosed = completion.rpartition("[")[2]
    if "[" in completion and "]" not in unclosed:  # cut by max_tokens inside the list
        candidates.append(unclosed)
    for text in reversed(candidates):
        items = [t.strip(" .'\"*").lower() for t in re.split(r"[,\s;]+", text) if t.strip(" .'\"*")]
        if len(items) >= n and all(i in _YES | _NO for i in items[:n]):
            return [i in _YES for i in items[:n]]
    return None


# surprisal ----------------------------------------------------------------------------------------------

# Raw text, no chat turns: the scorer model reads a window after one of two contexts, and only the window's
# tokens are scored. The plain context gives the first token something to follow, as the explained one does.
SURPRISAL_PLAIN = "Text:\n"
SURPRISAL_EXPLAINED = "The text below features {explanation}.\nText:\n"


def surprisal_contexts(explanation: str) -> tuple[str, str]:
    """The contexts a window is read after: without the explanation, and with it."""
    return SURPRISAL_PLAIN, SURPRISAL_EXPLAINED.format(explanation=explanation.rstrip(". "))


def surprisal_version() -> str:
    return version(SURPRISAL_PLAIN, SURPRISAL_EXPLAINED)


# intruder -----------------------------------------------------------------------------------------------

INTRUDER_SYSTEM = """You test features inside a language model. You get numbered text excerpts; in each, the \
tokens where a feature fires are wrapped in << and >>. Every excerpt but one shows the same feature; one shows \
another feature. Find the odd one out: the excerpt whose marked tokens have least in common with the others'. \
Reply with JSON only: {"intruder": N} with N the number of that excerpt."""

# The worked example has as many excerpts as the real question: sea birds marked, and one odd excerpt.
INTRUDER_POOL = (
    "<<gulls>> and <<terns>> circled above the harbour",
    "a colony of <<puffins>> nests on the cliffs",
    "an <<albatross>> can glide for hours",
    "<<cormorants>> dried their wings on the rocks",
    "a <<pelican>> scooped up the fish",
    "the <<heron>> stood still in the shallows",
    "<<gannets>> dived into the waves",
    "we counted forty <<kittiwakes>> on the ledge",
)
INTRUDER_ODD = "the committee <<approved>> the budget on Monday"
INTRUDER_OPEN, INTRUDER_CLOSE = '{"intruder": ', "}"


def intruder_example(n: int) -> tuple[list[str], int]:
    """The worked example's n excerpts and the (1-based) number of its odd one: the second, so that a small
    model copying the example's answer does not copy the first or last position, where ties fall."""
    odd = min(2, n)
    birds = [INTRUDER_POOL[i % len(INTRUDER_POOL)] for i in range(n - 1)]
    return birds[: odd - 1] + [INTRUDER_ODD] + birds[odd - 1 :], odd


def intruder_messages(excerpts: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """An intruder question: instructions and a worked example of as many excerpts, then the excerpts (marked)."""
    example, odd = intruder_example(len(excerpts))

    def body(texts: Sequence[str]) -> str:
        return "\n".join(f"Excerpt {i}: {text}" for i, text in enumerate(texts, 1))

    answer = f"{INTRUDER_OPEN}{odd}{INTRUDER_CLOSE}"
    return (("system", INTRUDER_SYSTEM), ("user", body(example)), ("assistant", answer), ("user", body(excerpts)))


def intruder_format(n: int) -> OutputFormat:
    """The replies a constrained backend may give to an intruder question of n excerpts: one excerpt number."""
    choices = tuple(str(i) for i in range(1, n + 1))
    schema = {"type": "object", "additionalProperties": False, "required": ["intruder"],
              "properties": {"intruder": {"type": "integer", "minimum": 1, "maximum": n}}}
    return OutputFormat(f"intruder_{n}", ((INTRUDER_OPEN,), choices, (INTRUDER_CLOSE,)),
                        json.dumps(schema, sort_keys=True))


def parse_intruder(completion: str, n: int) -> int | None:
    """The 0-based excerpt an intruder reply names: the number after "intruder" (else the reply's first number),
    if it is between 1 and n; None when it cannot be read."""
    named = re.findall(r"intruder\W*(\d+)", completion, re.IGNORECASE) or re.findall(r"\d+", completion)[:1]
    if named and 1 <= int(named[0]) <= n:
        return int(named[0]) - 1
    return None


def intruder_version() -> str:
    return version(INTRUDER_SYSTEM, repr(INTRUDER_POOL), INTRUDER_ODD, INTRUDER_OPEN, INTRUDER_CLOSE)


# simulation ---------------------------------------------------------------------------------------------

SIMULATION_SYSTEM = """You predict a feature inside a language model from its explanation. You get the \
explanation and numbered text excerpts, each split into its tokens by "|". For every token of every excerpt, \
predict how strongly the feature fires there, judging only by the explanation: 0 where it is silent (most \
tokens), up to 10 where it fires most. Reply with JSON only: {"activations": [[...], ...]}, one list per excerpt \
in order, with one number per token."""

SIMULATION_EXAMPLE = (("gulls", " and", " terns", " circled", " the", " harbour"), (8, 0, 9, 0, 0, 0)), \
    ((" the", " train", " left", " at", " noon"), (0, 0, 0, 0, 0))
SIMULATION_MAX = 10
SIMULATION_OPEN, SIMULATION_SEPARATOR, SIMULATION_NEXT, SIMULATION_CLOSE = '{"activations": [[', ", ", "], [", "]]}"


def format_simulation(predictions: Sequence[Sequence[int]]) -> str:
    """A simulation reply as the worked example shows it and constrained decoding produces it."""
    return SIMULATION_OPEN + SIMULATION_NEXT.join(
        SIMULATION_SEPARATOR.join(str(v) for v in window) for window in predictions) + SIMULATION_CLOSE


def token_line(pieces: Sequence[str]) -> str:
    return "|".join(clean_piece(piece) for piece in pieces)


def simulation_format(lengths: Sequence[int]) -> OutputFormat:
    """The replies a constrained backend may give: one list per window, of one 0-10 number per token."""
    values = tuple(str(v) for v in range(SIMULATION_MAX + 1))
    slots: list[tuple[str, ...]] = [(SIMULATION_OPEN,)]
    for w, length in enumerate(lengths):
        if w:
            slots.append((SIMULATION_NEXT,))
        for t in range(length):
            if t:
                slots.append((SIMULATION_SEPARATOR,))
            slots.append(values)
    slots.append((SIMULATION_CLOSE,))
    window = lambda n: {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": SIMULATION_MAX},
                        "minItems": n, "maxItems": n}
    schema = {"type": "object", "additionalProperties": False, "required": ["activations"],
              "properties": {"activations": {"type": "array", "prefixItems": [window(n) for n in lengths],
                                             "items": False, "minItems": len(lengths), "maxItems": len(lengths)}}}
    return OutputFormat(f"simulation_{len(lengths)}", tuple(slots), json.dumps(schema, sort_keys=True))


def parse_simulation(completion: str, lengths: Sequence[int]) -> list[list[float]] | None:
    """Each window's predicted activations (0-10) from a simulation reply: the first len(lengths) bracketed lists
    of numbers, each with at least its window's tokens (numbers past them are dropped, as for parse_answers;
    values are clipped to 0-10). None when it cannot be read."""
    lists = []
    for text in _LIST.findall(completion):
        try:
            lists.append([min(max(float(v), 0.0), SIMULATION_MAX) for v in text.replace(",", " ").split()])
        except ValueError:
            continue
    if len(lists) < len(lengths) or any(len(found) < n for found, n in zip(lists, lengths)):
        return None
    return [found[:n] for found, n in zip(lists, lengths)]


# All at once (Bills et al.'s method): the reply is not generated but read, one token per line, each followed by a
# tab; the scorer's next-token probabilities of the digits after each tab are its prediction for that token. Lines
# already read carry a placeholder, not a value, so no prediction is made from an earlier one.
SIMULATION_LINES_SYSTEM = """You predict a feature inside a language model from its explanation. You get the \
explanation and numbered text excerpts, each split into its tokens by "|". Copy each excerpt one token per line; \
after each token write a tab and how strongly the feature fires there, judging only by the explanation: 0 where \
it is silent (most tokens), up to 9 where it fires most."""
SIMULATION_LINES_MAX = 9
SIMULATION_DIGITS = tuple(str(v) for v in range(SIMULATION_LINES_MAX + 1))
SIMULATION_PLACEHOLDER = "?"


def simulation_body(explanation: str, windows: Sequence[Sequence[str]]) -> str:
    lines = [f"Explanation: {explanation}"]
    lines += [f"Excerpt {i} ({len(pieces)} tokens): {token_line(pieces)}" for i, pieces in enumerate(windows, 1)]
    return "\n".join(lines)


def simulation_messages(explanation: str, windows: Sequence[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """A simulation prompt: instructions and a worked example, then the explanation and each window's tokens."""
    example = simulation_body(EXAMPLE_EXPLANATION, [pieces for pieces, _ in SIMULATION_EXAMPLE])
    answer = format_simulation([acts for _, acts in SIMULATION_EXAMPLE])
    return (("system", SIMULATION_SYSTEM), ("user", example), ("assistant", answer),
            ("user", simulation_body(explanation, windows)))


def line_piece(piece: str) -> str:
    return clean_piece(piece).replace("\t", "⇥")


def simulation_lines(windows: Sequence[Sequence[str]], values: Sequence[Sequence[str]]) -> list[str]:
    """A line-by-line reply cut after each token's tab: piece i ends where token i's value goes, and starts with
    the value of the token before it (`values`, per window and token: a digit, or the placeholder)."""
    pieces, pending = [], ""
    for w, (tokens, shown) in enumerate(zip(windows, values), 1):
        pending += f"Excerpt {w}\n"
        for token, value in zip(tokens, shown):
            pieces.append(f"{pending}{line_piece(token)}\t")
            pending = f"{value}\n"
    return pieces


def simulation_lines_prompt(explanation: str, windows: Sequence[Sequence[str]]) -> tuple[tuple[tuple[str, str], ...],
                                                                                          list[str]]:
    """An all-at-once simulation: the messages (instructions, a worked example answered line by line, the
    explanation and the windows) and the pieces of the reply the scorer reads, a digit due after each."""
    example = [pieces for pieces, _ in SIMULATION_EXAMPLE]
    worked = simulation_lines(example, [[str(min(v, SIMULATION_LINES_MAX)) for v in acts]
                                        for _, acts in SIMULATION_EXAMPLE])
    answer = "".join(worked) + str(min(SIMULATION_EXAMPLE[-1][1][-1], SIMULATION_LINES_MAX))
    messages = (("system", SIMULATION_LINES_SYSTEM), ("user", simulation_body(EXAMPLE_EXPLANATION, example)),
                ("assistant", answer), ("user", simulation_body(explanation, windows)))
    return messages, simulation_lines(windows, [[SIMULATION_PLACEHOLDER] * len(w) for w in windows])


def simulation_version() -> str:
    return version(SIMULATION_SYSTEM, EXAMPLE_EXPLANATION, repr(SIMULATION_EXAMPLE), format_simulation([[0, 1]]),
                   SIMULATION_LINES_SYSTEM, "".join(simulation_lines([["a", "b"]], [["0", SIMULATION_PLACEHOLDER]])))


# intervention -------------------------------------------------------------------------------------------

INTERVENTION_SYSTEM = """You test an explanation of a feature inside a language model. The model continued \
each prompt twice: once as it is, and once with the feature switched on, which pushes its text toward what the \
feature stands for (strongly switched on, it may also garble the text). You get the explanation and numbered \
pairs of continuations of a prompt. For each pair, decide which continuation was written with the feature on, \
judging by the explanation. Reply with JSON only: {"steered": [...]} with one number per pair, in order, 1 if \
the first continuation was steered and 2 if the second was."""

# (prompt, clean continuation, steered continuation, which one is shown first): cycled to the real batch's size.
INTERVENTION_POOL = (
    ("I think that", " we should leave early tomorrow.", " gulls and terns nest on the cliffs.", 2),
    ("Yesterday,", " a puffin and an albatross flew over the sea.", " the council met to discuss the budget.", 1),
    ("Here is a short story:", " a heron stood in the reeds, and a gull", " once there was a king who ruled a", 1),
    ("The next thing to say is", " that the meeting is moved to Monday.", " that cormorants dive for fish.", 2),
)
STEERED_OPEN, STEERED_CLOSE = '{"steered": [', "]}"


def format_steered(answers: Sequence[int]) -> str:
    return STEERED_OPEN + ANSWER_SEPARATOR.join(str(a) for a in answers) + STEERED_CLOSE


def intervention_messages(explanation: str, pairs: Sequence[tuple[str, str, str]]) -> tuple[tuple[str, str], ...]:
    """An intervention prompt: instructions and a worked example of as many pairs, then the explanation and the
    pairs, each (prompt, first continuation, second continuation)."""
    def body(text: str, shown: Sequence[tuple[str, str, str]]) -> str:
        lines = [f"Explanation: {text}"]
        for i, (prompt, first, second) in enumerate(shown, 1):
            lines.append(f"Pair {i}: the prompt {json.dumps(prompt)} continued as 1: {json.dumps(clean_piece(first))} "
                         f"or as 2: {json.dumps(clean_piece(second))}")
        return "\n".join(lines)

    examples = [INTERVENTION_POOL[i % len(INTERVENTION_POOL)] for i in range(len(pairs))]
    shown = [(p, steered, clean) if first == 1 else (p, clean, steered) for p, clean, steered, first in examples]
    return (("system", INTERVENTION_SYSTEM), ("user", body(EXAMPLE_EXPLANATION, shown)),
            ("assistant", format_steered([first for *_, first in examples])), ("user", body(explanation, pairs)))


def intervention_format(n: int) -> OutputFormat:
    """The replies a constrained backend may give to an intervention prompt of n pairs: n numbers 1/2."""
    slots: list[tuple[str, ...]] = [(STEERED_OPEN,), ("1", "2")]
    for _ in range(n - 1):
        slots += [(ANSWER_SEPARATOR,), ("1", "2")]
    schema = {"type": "object", "additionalProperties": False, "required": ["steered"],
              "properties": {"steered": {"type": "array", "items": {"type": "integer", "enum": [1, 2]},
                                         "minItems": n, "maxItems": n}}}
    return OutputFormat(f"steered_{n}", (*slots, (STEERED_CLOSE,)), json.dumps(schema, sort_keys=True))


def parse_steered(completion: str, n: int) -> list[int] | None:
    """The n picks (0: the first continuation, 1: the second) of an intervention reply: the last bracketed list
    whose first n entries are each 1 or 2; None when it cannot be read."""
    for text in reversed(_LIST.findall(completion)):
        items = [t.strip(" .'\"") for t in re.split(r"[,\s;]+", text) if t.strip(" .'\"")]
        if len(items) >= n and all(i in ("1", "2") for i in items[:n]):
            return [int(i) - 1 for i in items[:n]]
    return None


def intervention_version() -> str:
    return version(INTERVENTION_SYSTEM, EXAMPLE_EXPLANATION, repr(INTERVENTION_POOL), format_steered([1, 2]))


# output-side explainer ----------------------------------------------------------------------------------

OUTPUT_EXPLAINER_SYSTEM = """You are studying one feature inside a language model by what it makes the model \
write. The model continued each prompt as it is, and again with the feature switched on; you also get the \
tokens the feature makes likely next. Work out what the switched-on continuations have in common that the \
plain ones lack: a topic, a kind of word, a style. Do not repeat a continuation. Answer in a few words, on a \
final line of the form "Explanation: <what the feature makes the model write>"."""
OUTPUT_PROMPT_LINE = "Prompt {i}: {prompt}"
OUTPUT_PLAIN_LINE = "  as it is: {text}"
OUTPUT_STEERED_LINE = "  switched on: {text}"

# An invented feature (kitchen words), unlike any scorer's worked example, so that the intervention scorer's
# example answer cannot leak into what it judges.
OUTPUT_EXAMPLE = (
    (("I think that", " we should leave early tomorrow.", (" we should bake the bread in the oven.",)),
     ("Yesterday,", " the council met to discuss the budget.", (" she stirred the soup and chopped onions.",))),
    ("oven", "soup", "flour", "bake"),
    "cooking and kitchen words (oven, soup, bake)",
)


def output_explainer_messages(pairs: Sequence[tuple[str, str, Sequence[str]]], promoted: Sequence[str]
                              ) -> tuple[tuple[str, str], ...]:
    """The chat for one latent's output-side explanation: instructions, a worked example, then per prompt its
    plain continuation and its steered ones (weakest strength first), and the promoted tokens."""
    def body(shown: Sequence[tuple[str, str, Sequence[str]]], tokens: Sequence[str]) -> str:
        lines = []
        for i, (prompt, plain, steered) in enumerate(shown, 1):
            lines.append(OUTPUT_PROMPT_LINE.format(i=i, prompt=json.dumps(prompt)))
            lines.append(OUTPUT_PLAIN_LINE.format(text=json.dumps(clean_piece(plain))))
            lines += [OUTPUT_STEERED_LINE.format(text=json.dumps(clean_piece(text))) for text in steered]
        if tokens:
            lines.append(f"{PROMOTED_LABEL} " + ", ".join(f'"{t}"' for t in tokens))
        return "\n".join(lines)

    example_pairs, example_tokens, example_answer = OUTPUT_EXAMPLE
    return (("system", OUTPUT_EXPLAINER_SYSTEM), ("user", body(example_pairs, example_tokens)),
            ("assistant", f"{ANSWER_MARKER} {example_answer}"), ("user", body(pairs, promoted)))


def output_explainer_version() -> str:
    return version(OUTPUT_EXPLAINER_SYSTEM, OUTPUT_PROMPT_LINE, OUTPUT_PLAIN_LINE, OUTPUT_STEERED_LINE,
                   PROMOTED_LABEL, repr(OUTPUT_EXAMPLE), ANSWER_MARKER)

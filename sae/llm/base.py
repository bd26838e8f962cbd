"""What every LLM backend speaks: chat requests with per-request sampling, and completions with usage.

A backend turns a list of requests into a list of completions in the same order. Batching is the
backend's business (vLLM batches all of them, the OpenAI client keeps a bounded number in flight, the
local runtime groups them by its batch size); callers hand over bounded batches so a crash loses little.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass


class BackendError(RuntimeError):
    """A backend could not be built or failed for good (after its retries); the message says what to do."""


@dataclass(frozen=True)
class OutputFormat:
    """A constraint on a completion: exactly the strings made of one choice from each slot, in order.

    E.g. slots (('[',), ('0', '1'), (']',)) admit "[0]" and "[1]". Each backend enforces it in its own terms:
    a GBNF grammar (llama.cpp), a regular expression (vLLM), a logits processor (transformers), or, for
    servers that take no grammar (OpenAI's response_format), `json_schema`, which describes the same JSON
    value but lets the server choose the whitespace.
    """

    name: str  # what the format is called where a server wants a name (OpenAI's response_format)
    slots: tuple[tuple[str, ...], ...]
    json_schema: str  # JSON text of the schema

    def __post_init__(self):
        if not self.slots or not all(self.slots) or not all(choice for slot in self.slots for choice in slot):
            raise ValueError(f"output format {self.name!r} needs non-empty slots of non-empty choices")

    @property
    def max_length(self) -> int:
        """Characters in the longest admitted string: no tokenization takes more tokens than this."""
        return sum(max(map(len, slot)) for slot in self.slots)

    def gbnf(self) -> str:
        """The format as a llama.cpp (GBNF) grammar."""
        def literal(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

        return "root ::= " + " ".join("(" + " | ".join(map(literal, slot)) + ")" for slot in self.slots)

    def regex(self) -> str:
        """The format as a regular expression (only the characters special in every regex dialect escaped)."""
        def literal(text: str) -> str:
            return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)

        return "".join("(" + "|".join(map(literal, slot)) + ")" for slot in self.slots)

    # Reading text against the format, for runtimes that mask tokens themselves. A state is (slot, choice,
    # characters of that choice read); slot == len(slots) is the end.
    def start(self) -> frozenset[tuple[int, int, int]]:
        return self._enter(0)

    def _enter(self, slot: int) -> frozenset[tuple[int, int, int]]:
        if slot == len(self.slots):
            return frozenset({(slot, 0, 0)})
        return frozenset((slot, choice, 0) for choice in range(len(self.slots[slot])))

    def advance(self, states: frozenset, text: str) -> frozenset:
        """The states after reading `text` from `states`; empty when `text` leaves the format."""
        for char in text:
            following = set()
            for slot, choice, offset in states:
                if slot < len(self.slots) and self.slots[slot][choice][offset] == char:
                    if offset + 1 == len(self.slots[slot][choice]):
                        following |= self._enter(slot + 1)
                    else:
                        following.add((slot, choice, offset + 1))
            states = frozenset(following)
            if not states:
                break
        return states

    def next_chars(self, states: frozenset) -> set[str]:
        return {self.slots[slot][choice][offset] for slot, choice, offset in states if slot < len(self.slots)}

    def is_complete(self, states: frozenset) -> bool:
        return any(slot == len(self.slots) for slot, _, _ in states)

    def matches(self, text: str) -> bool:
        return self.is_complete(self.advance(self.start(), text))


_REGEX_SPECIAL = frozenset("\\.^$*+?{}[]|()")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0
    # > 0: return this many most likely tokens (with log-probabilities) at every generated position, from
    # the model's own distribution (before `output_format` masks it).
    top_logprobs: int = 0
    output_format: OutputFormat | None = None  # constrained decoding: only strings of this format

    def as_dict(self) -> dict:
        """The settings, without unset ones: a request without a constraint keeps its old cache key."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: system, user, assistant, ...
    sampling: SamplingParams

    def as_openai_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass
class TokenLogprobs:
    token: str  # the generated token's text
    top: dict[str, float]  # the most likely tokens at this position (text -> log-probability)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # from sending the request (or its batch) to its completion
    # One entry per generated token when the request asked for top_logprobs and the backend gives them.
    logprobs: list[TokenLogprobs] | None = None
    cached: bool = False  # served from the response cache, no model call

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Completion:
        data = json.loads(text)
        if data.get("logprobs") is not None:
            data["logprobs"] = [TokenLogprobs(**entry) for entry in data["logprobs"]]
        return cls(**data)


@dataclass(frozen=True)
class ScoredText:
    """A text whose every token the model scores, read after a context that is not scored."""

    context: str  # not empty: the text's first token is predicted from it
    text: str


@dataclass(frozen=True)
class ChoiceText:
    """A chat prompt whose reply is read, not generated: the model reads the reply (its `pieces` one after
    another) in one forward pass, and after each piece gives the log-probability of each of `choices` (each one
    token) as the next token. Pieces are tokenized apart, so a choice after a piece starts a token."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, as in ChatRequest
    pieces: tuple[str, ...]
    choices: tuple[str, ...]


def single_token(tokenizer, text: str) -> int:
    """The one token id of `text` under a Hugging Face tokenizer; a choice longer than a token is refused."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise BackendError(f"{text!r} is {len(ids)} tokens of the model's tokenizer; a choice read from one "
                           "next-token distribution must be one token")
    return ids[0]


@dataclass
class EncodedChoices:
    """A ChoiceText as token ids, the same for every backend that reads one with a Hugging Face tokenizer."""

    ids: list[int]  # the chat prompt (its template, with the assistant's turn opened) and every piece
    ends: list[int]  # per piece, the tokens up to its end: the choice after it is predicted at ends[i] - 1
    choice_ids: list[int]


def encode_choices(tokenizer, request: ChoiceText) -> EncodedChoices:
    prompt = tokenizer.apply_chat_template(ChatRequest(request.messages, SamplingParams()).as_openai_messages(),
                                           add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ends = []
    for piece in request.pieces:
        ids = ids + tokenizer(piece, add_special_tokens=False)["input_ids"]
        ends.append(len(ids))
    return EncodedChoices(ids, ends, [single_token(tokenizer, choice) for choice in request.choices])


@dataclass
class ChoiceLogprobs:
    logprobs: list[list[float]]  # per piece, the log-probability of each choice (over the whole vocabulary)
    prompt_tokens: int  # the tokens read: the chat prompt and every piece


PROMPT_LOGPROB_BACKENDS = "llm.backend 'local' (transformers) or 'vllm'"


class LLMClient(abc.ABC):
    backend: str  # local | openai | vllm
    model: str  # the model's name as the backend knows it; part of every cache key
    supports_logprobs: bool = False

    @abc.abstractmethod
    def complete(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[Completion]:
        """Complete every request; the result is in the order of `requests`."""

    def prompt_logprobs(self, requests: Sequence[ScoredText], progress: bool = False) -> list[list[float]]:
        """For each request, the log-probability of every token of its text given the context and the text's
        earlier tokens. Context and text are tokenized apart, so a text has the same tokens in any context."""
        raise BackendError(f"the {self.backend} backend gives no log-probabilities of prompt tokens, which the "
                           f"surprisal scorer needs; score with {PROMPT_LOGPROB_BACKENDS} (score.llm), or drop "
                           "surprisal from score.scorers")

    def choice_logprobs(self, requests: Sequence[ChoiceText], progress: bool = False) -> list[ChoiceLogprobs]:
        """For each request, the log-probabilities of its choices after each of its pieces (see ChoiceText)."""
        raise BackendError(f"the {self.backend} backend does not read a given reply's next-token probabilities, "
                           "which `score.simulation_method: all_at_once` needs; score with llm.backend 'local' "
                           "or 'vllm' (score.llm), or set simulation_method: structured")

    @property
    def prompt_logprobs_model(self) -> str:
        """The model that answers prompt_logprobs and choice_logprobs (a local client may use another runtime's
        copy)."""
        return self.model

    def close(self) -> None:
        """Release the engine, server connection or model weights."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request_key(model: str, request: ChatRequest) -> str:
    """The response cache's key: the same model, messages and sampling give the same completion."""
    payload = json.dumps([model, request.messages, request.sampling.as_dict()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()

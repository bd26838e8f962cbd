"""The in-process backend: a chat model run by this process, on CPU or GPU, in one of two runtimes.

- transformers: the safetensors model (for the built-in, the GGUF converted once under the lake), batched
  `generate` in groups of `batch_size` prompts of similar length.
- llamacpp: llama.cpp's server embedded in the process (the `xllamacpp` package) over a GGUF file, with
  `batch_size` parallel slots fed by threads (continuous batching). For the built-in it reads the shipped
  Q4_1 GGUF directly, so its answers differ a little from the float32 transformers model; `model` (the cache
  key) says which runtime answered.

`runtime: auto` picks llama.cpp on CPU when xllamacpp is installed and the model is a GGUF (the built-in is
one), else transformers. On a 2-core CPU with real explainer prompts (benchmarks/explain.py: 8 prompts of
~700 tokens sharing their first ~300, quiet machine) llama.cpp made 46 explanations/min against 33 for
transformers, batched or not: its per-slot prompt cache reuses the shared instructions. On prompts without
a shared prefix the two were even (~32 prompts/min).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from ..config import BUILTIN_MODEL, LLM_RUNTIMES, LLMConfig, check_choice
from ..models import BUILTIN_GGUF, builtin_gguf_folder, builtin_model_folder, resolve_device, resolve_dtype
from .base import (BackendError, ChatRequest, ChoiceLogprobs, ChoiceText, Completion, LLMClient, OutputFormat,
                   SamplingParams, ScoredText, TokenLogprobs, encode_choices)
from .openai import build_payload, parse_chat_response

log = logging.getLogger(__name__)
Read = TypeVar("Read")  # what TransformersRuntime.forward keeps of one sequence's logits

DEFAULT_SLOT_CONTEXT = 4096  # llamacpp: tokens per slot (prompt + completion) unless llm.max_model_len says


def gguf_path(cfg: LLMConfig) -> Path | None:
    """The GGUF file the llamacpp runtime would read: the shipped one for the built-in, or `model` itself."""
    if cfg.model == BUILTIN_MODEL:
        try:
            return builtin_gguf_folder() / BUILTIN_GGUF
        except RuntimeError as err:  # the package that ships it is missing
            raise BackendError(str(err)) from None
    path = Path(cfg.model).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def choose_runtime(cfg: LLMConfig, device: torch.device) -> str:
    check_choice(cfg.runtime, LLM_RUNTIMES, "llm.runtime")
    has_llamacpp = importlib.util.find_spec("xllamacpp") is not None
    if cfg.runtime == "llamacpp":
        if not has_llamacpp:
            raise BackendError("llm.runtime 'llamacpp' needs the xllamacpp package: pip install xllamacpp")
        if gguf_path(cfg) is None:
            raise BackendError(
                f"llm.runtime 'llamacpp' reads GGUF files, but llm.model {cfg.model!r} is neither "
                f"{BUILTIN_MODEL!r} nor a .gguf file; point llm.model at one or use runtime 'transformers'"
            )
        return "llamacpp"
    if cfg.runtime == "auto" and device.type == "cpu" and has_llamacpp:
        return "llamacpp" if gguf_path(cfg) is not None else "transformers"
    return "transformers"


def transformers_runtime(cfg: LLMConfig, lake_root: Path, device: torch.device) -> TransformersRuntime:
    """The transformers runtime of `cfg`: the built-in from its converted folder, a GGUF dequantized on load,
    or a Hub id / local folder."""
    gguf = Path(cfg.model).expanduser() if cfg.model.endswith(".gguf") else None
    if cfg.model == BUILTIN_MODEL:
        source, gguf_file = str(builtin_model_folder(Path(lake_root))), None
    elif gguf is not None:  # transformers dequantizes a GGUF on load
        source, gguf_file = str(gguf.parent), gguf.name
    else:
        source, gguf_file = cfg.model, None
    return TransformersRuntime(source, cfg.revision, device, resolve_dtype(cfg.dtype, device), cfg.batch_size,
                               gguf_file=gguf_file)


class LocalClient(LLMClient):
    backend = "local"
    supports_logprobs = True

    def __init__(self, cfg: LLMConfig, lake_root: Path):
        if cfg.batch_size < 1:
            raise BackendError(f"llm.batch_size must be positive, got {cfg.batch_size}")
        try:
            device = resolve_device(cfg.device)
        except RuntimeError as err:
            raise BackendError(str(err)) from None
        self.cfg, self.lake_root, self.device = cfg, Path(lake_root), device
        self.runtime = choose_runtime(cfg, device)
        self._transformers: TransformersRuntime | None = None  # for prompt log-probs, which llama.cpp lacks
        if self.runtime == "llamacpp":
            gguf = gguf_path(cfg)
            self._engine = LlamaCppRuntime(gguf, slots=cfg.batch_size, device=device,
                                           slot_context=cfg.max_model_len or DEFAULT_SLOT_CONTEXT)
            # Another model file (here: 4-bit weights), so another cache key than the transformers model's.
            self.model = f"{cfg.model}@llamacpp:{gguf.name}"
        else:
            self._engine = self._transformers = transformers_runtime(cfg, self.lake_root, device)
            self.model = cfg.model
        log.info("local LLM %s on %s with the %s runtime", cfg.model, device, self.runtime)

    def complete(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[Completion]:
        if not requests:
            return []
        return self._engine.complete(list(requests), progress)

    def prompt_logprobs(self, requests: Sequence[ScoredText], progress: bool = False) -> list[list[float]]:
        """From a transformers forward pass. llama.cpp's server gives no prompt log-probs, so on that runtime
        the same model is also loaded with transformers, once, for these calls (for the built-in: its
        converted float32 copy, so these numbers come from `prompt_logprobs_model`, not the 4-bit GGUF)."""
        if not requests:
            return []
        return self.transformers().prompt_logprobs(list(requests), progress)

    def choice_logprobs(self, requests: Sequence[ChoiceText], progress: bool = False) -> list[ChoiceLogprobs]:
        """From a transformers forward pass, on either runtime (as prompt_logprobs, for the same reason)."""
        if not requests:
            return []
        return self.transformers().choice_logprobs(list(requests), progress)

    def transformers(self) -> TransformersRuntime:
        """The transformers runtime: the engine itself, or the same model loaded beside llama.cpp on first use."""
        if self._transformers is None:
            log.info("log-probs of %s come from the transformers runtime (llama.cpp gives none)", self.cfg.model)
            self._transformers = transformers_runtime(self.cfg, self.lake_root, self.device)
        return self._transformers

    @property
    def prompt_logprobs_model(self) -> str:
        return self.cfg.model  # the transformers runtime's identity, whichever runtime completes

    def close(self) -> None:
        self._engine.close()
        if self._transformers is not None and self._transformers is not self._engine:
            self._transformers.close()


class SeededSampler:
    """A logits processor that samples every row with its request's own seeded generator.

    `generate` samples the whole batch from one global RNG, so a request's sample would depend on the other
    requests of its batch. This processor draws each sampled row's token itself (temperature, then top-p) and
    leaves only that token possible; generate then runs greedy. Rows with temperature 0 stay greedy. The
    same request thus gives the same tokens whatever its batch (up to floating-point differences in the
    logits between batch shapes).
    """

    def __init__(self, sampling: Sequence[SamplingParams], device: torch.device):
        self.rows = [
            (row, s.temperature, s.top_p, torch.Generator(device=device).manual_seed(s.seed))
            for row, s in enumerate(sampling)
            if s.temperature > 0
        ]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()  # generate keeps the raw logits (for logprobs) in this very tensor
        for row, temperature, top_p, generator in self.rows:
            probs = torch.softmax(scores[row].float() / temperature, dim=-1)
            if top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
                drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
                probs[order[drop]] = 0.0
            token = torch.multinomial(probs, 1, generator=generator)
            scores[row].fill_(float("-inf"))
            scores[row, token] = 0.0
        return scores


class Vocabulary:
    """Every token's text, and the tokens by their first character, for masking by output format."""

    def __init__(self, tokenizer):
        self.texts = tokenizer.batch_decode([[token] for token in range(len(tokenizer))])
        self.starting_with: dict[str, list[int]] = {}
        for token, text in enumerate(self.texts):
            if text:
                self.starting_with.setdefault(text[0], []).append(token)


class FormatConstraint:
    """A logits processor that lets each row with an output format generate only that format's strings, then
    an end-of-sequence token; rows without one are left alone. The tokens allowed in each state of a format
    are found once (the tokens that start with a character the state accepts, read through) and kept."""

    def __init__(self, formats: Sequence[OutputFormat | None], prompt_width: int, vocabulary: Vocabulary,
                 eos: Sequence[int], allowed: dict):
        self.formats, self.prompt_width, self.vocabulary, self.eos = formats, prompt_width, vocabulary, list(eos)
        self.allowed = allowed  # (format, states) -> mask over the vocabulary, shared across calls

    def mask(self, output_format: OutputFormat, states: frozenset, width: int, device) -> torch.Tensor:
        key = (output_format, states)
        if key not in self.allowed:
            mask = torch.zeros(width, dtype=torch.bool)
            for char in output_format.next_chars(states):
                for token in self.vocabulary.starting_with.get(char, ()):
                    if output_format.advance(states, self.vocabulary.texts[token]):
                        mask[token] = True
            if output_format.is_complete(states) or not states:  # done (or lost): only the end may follow
                mask[self.eos] = True
            self.allowed[key] = mask.to(device)
        return self.allowed[key]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()  # generate keeps the raw logits (for logprobs) in this very tensor
        for row, output_format in enumerate(self.formats):
            generated = input_ids[row, self.prompt_width:].tolist()
            if output_format is None or any(token in self.eos for token in generated):
                continue  # unconstrained, or finished (generate pads it from here on)
            text = "".join(self.vocabulary.texts[token] for token in generated)
            states = output_format.advance(output_format.start(), text)
            scores[row, ~self.mask(output_format, states, scores.shape[-1], scores.device)] = float("-inf")
        return scores


class TransformersRuntime:
    def __init__(self, source: str, revision: str | None, device: torch.device, dtype: torch.dtype,
                 batch_size: int, gguf_file: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        extra = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, **extra)
            model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=dtype, **extra)
        except (OSError, ValueError) as err:
            raise BackendError(f"could not load the local LLM {source!r}: {err}") from err
        if not self.tokenizer.chat_template:
            raise BackendError(f"the local LLM {source!r} has no chat template; use an instruction-tuned model")
        self.tokenizer.padding_side = "left"
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        if not eos:
            raise BackendError(f"the local LLM {source!r} names no end-of-sequence token")
        self.eos = set(eos)
        self.eos_list = eos
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        self._token_text: dict[int, str] = {}
        self._vocabulary: Vocabulary | None = None  # built on the first constrained request
        self._allowed: dict = {}  # FormatConstraint's masks, kept across calls

    def encode(self, request: ChatRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(request.as_openai_messages(), add_generation_prompt=True,
                                                  tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def complete(self, requests: list[ChatRequest], progress: bool) -> list[Completion]:
        prompts = [self.encode(request) for request in requests]
        # Similar lengths share a batch (less padding); the longest go first, so running out of memory shows
        # at once.
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]), reverse=True)
        results: list[Completion | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc=f"local {self.model.name_or_path}", unit="req",
                  disable=not progress) as bar:
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                done = self.generate([requests[i] for i in rows], [prompts[i] for i in rows])
                for i, completion in zip(rows, done):
                    results[i] = completion
                bar.update(len(rows))
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def generate(self, requests: list[ChatRequest], prompts: list[list[int]]) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList

        start = time.perf_counter()
        width = max(map(len, prompts))
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every row's last prompt token is aligned
            input_ids[row, width - len(prompt):] = torch.tensor(prompt)
            attention[row, width - len(prompt):] = 1
        sampling = [request.sampling for request in requests]
        want_logprobs = any(s.top_logprobs > 0 for s in sampling)
        config = GenerationConfig(
            max_new_tokens=max(s.max_tokens for s in sampling), do_sample=False, num_beams=1,
            pad_token_id=self.pad_id, eos_token_id=self.eos_list, return_dict_in_generate=True,
            output_logits=want_logprobs,
        )
        processors = LogitsProcessorList()
        formats = [s.output_format for s in sampling]
        if any(formats):
            if self._vocabulary is None:
                self._vocabulary = Vocabulary(self.tokenizer)
            processors.append(FormatConstraint(formats, width, self._vocabulary, self.eos_list, self._allowed))
        if any(s.temperature > 0 for s in sampling):
            processors.append(SeededSampler(sampling, self.device))
        out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                  generation_config=config, logits_processor=processors)
        generated = out.sequences[:, width:].tolist()
        top = self._top_logprobs(out.logits, max(s.top_logprobs for s in sampling)) if want_logprobs else None
        latency = time.perf_counter() - start
        completions = []
        for row, (prompt, params) in enumerate(zip(prompts, sampling)):
            # A longer batch-mate may have run past this request's own max_tokens: cut there, or after EOS.
            tokens = generated[row][:params.max_tokens]
            end = next((j + 1 for j, token in enumerate(tokens) if token in self.eos), len(tokens))
            tokens = tokens[:end]
            logprobs = None
            if params.top_logprobs > 0 and top is not None:
                values, ids = top
                logprobs = [
                    TokenLogprobs(
                        token=self.token_text(token),
                        top=self._top_dict(ids[step][row][:params.top_logprobs],
                                           values[step][row][:params.top_logprobs]),
                    )
                    for step, token in enumerate(tokens)
                ]
            completions.append(Completion(
                text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                prompt_tokens=len(prompt), completion_tokens=len(tokens), latency_s=latency, logprobs=logprobs,
            ))
        return completions

    def prompt_logprobs(self, requests: list[ScoredText], progress: bool) -> list[list[float]]:
        """Log-probabilities of each text's tokens after its context, by forward passes of similar lengths."""
        encoded = []
        for request in requests:
            if not request.context:
                raise ValueError("a scored text needs a context: its first token is predicted from it")
            context = self.tokenizer(request.context)["input_ids"]  # with the BOS token, if the model has one
            encoded.append((context, self.tokenizer(request.text, add_special_tokens=False)["input_ids"]))

        def scored(i: int, logits: torch.Tensor) -> list[float]:
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            text = torch.tensor(encoded[i][1], device=logprobs.device).unsqueeze(1)
            return logprobs.gather(1, text).squeeze(1).tolist()

        # Position p predicts token p + 1: the text's tokens are predicted from len(context) - 1 on.
        predicting = [list(range(len(context) - 1, len(context) + len(text) - 1)) for context, text in encoded]
        return self.forward([context + text for context, text in encoded], predicting, scored, "log-probs", progress)

    def choice_logprobs(self, requests: list[ChoiceText], progress: bool) -> list[ChoiceLogprobs]:
        """Each reply read after its chat prompt; at the last token of each piece, the choices' log-probabilities."""
        encoded = [encode_choices(self.tokenizer, request) for request in requests]

        def read(i: int, logits: torch.Tensor) -> ChoiceLogprobs:
            at_marks = torch.log_softmax(logits.float(), dim=-1)
            return ChoiceLogprobs(at_marks[:, encoded[i].choice_ids].tolist(), len(encoded[i].ids))

        # The logits at the last token of a piece predict what follows it.
        marks = [[end - 1 for end in e.ends] for e in encoded]
        return self.forward([e.ids for e in encoded], marks, read, "choices", progress)

    @torch.inference_mode()
    def forward(self, sequences: list[list[int]], positions: list[list[int]],
                read: Callable[[int, torch.Tensor], Read], what: str, progress: bool) -> list[Read]:
        """`read(i, logits)` of each token sequence, with its logits [len(positions[i]), vocabulary] at the given
        positions alone, from batched forward passes of similar lengths (right padding, so positions start at 0
        in every row). Only those positions go through the output layer: the full logits of a batch would take
        gigabytes (every position times a vocabulary of ~50k)."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        results: list = [None] * len(sequences)
        with tqdm(total=len(sequences), desc=f"{what} {self.model.name_or_path}", unit="text",
                  disable=not progress) as bar:
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = max(len(sequences[i]) for i in rows)
                input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                attention = torch.zeros((len(rows), width), dtype=torch.long)
                for row, i in enumerate(rows):
                    input_ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
                    attention[row, :len(sequences[i])] = 1
                hidden = self.model.base_model(input_ids=input_ids.to(self.device),
                                               attention_mask=attention.to(self.device)).last_hidden_state
                for row, i in enumerate(rows):
                    results[i] = read(i, self.output_logits(hidden[row, positions[i]]))
                bar.update(len(rows))
        return results

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's output layer on final hidden states, as its own forward applies it (with the logit
        soft-capping some families use)."""
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @staticmethod
    def _top_logprobs(logits: tuple[torch.Tensor, ...], k: int) -> tuple[list, list]:
        """Per step, the k most likely tokens of every row under the model's raw (temperature 1) distribution."""
        values, ids = [], []
        for step_logits in logits:
            top = torch.log_softmax(step_logits.float(), dim=-1).topk(k, dim=-1)
            values.append(top.values.tolist())
            ids.append(top.indices.tolist())
        return values, ids

    def _top_dict(self, ids: list[int], values: list[float]) -> dict[str, float]:
        top: dict[str, float] = {}
        for token, value in zip(ids, values):
            text = self.token_text(token)
            top[text] = max(value, top.get(text, float("-inf")))  # two ids may decode to the same text
        return top

    def token_text(self, token: int) -> str:
        if token not in self._token_text:
            self._token_text[token] = self.tokenizer.decode([token])
        return self._token_text[token]

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LlamaCppRuntime:
    """llama.cpp's server in this process: `slots` sequences decode together, fed by as many threads."""

    def __init__(self, gguf: Path, slots: int, device: torch.device, slot_context: int):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_parallel = slots
        # Every slot owns its part of the KV cache: with one shared (unified) cache, requests that together
        # overflow it all fail.
        params.kv_unified = False
        params.n_ctx = slots * slot_context
        threads = cpu_count()
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.n_gpu_layers = 999 if device.type == "cuda" else 0  # a CUDA build of xllamacpp is needed on GPU
        params.verbosity = 0  # llama.cpp's per-request logging would flood the pipeline's output
        # The embedded server also listens on a local port; a random key keeps other local users off it.
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.api_keys = [secrets.token_urlsafe(24)]
        try:
            self.server = xllamacpp.Server(params)
        except Exception as err:  # the binding raises plain exceptions for unreadable files
            raise BackendError(f"llama.cpp could not load {gguf}: {err}") from err
        self.name = gguf.name
        self.slot_context = slot_context
        self.pool = concurrent.futures.ThreadPoolExecutor(slots, thread_name_prefix="llamacpp")

    def payload(self, request: ChatRequest) -> dict:
        payload = build_payload(self.name, request)
        # Only temperature and top-p shape sampling, as with the other backends (llama.cpp's server would also
        # apply its default top-k 40 and min-p 0.05).
        payload.update(top_k=0, min_p=0.0)
        output_format = request.sampling.output_format
        if output_format is not None:
            # The exact grammar rather than the JSON schema, which would leave the whitespace to the model.
            del payload["response_format"]
            payload["grammar"] = output_format.gbnf()
        return payload

    def one(self, request: ChatRequest) -> Completion:
        start = time.perf_counter()
        try:
            body = self.server.handle_chat_completions(self.payload(request))
        except (ValueError, RuntimeError) as err:  # the binding raises these for malformed requests
            raise BackendError(f"llama.cpp rejected a request: {err}") from err
        if "error" in body:
            error = body["error"]
            hint = ""
            if error.get("type") == "exceed_context_size_error":
                hint = f"; raise llm.max_model_len (now {self.slot_context} tokens per slot) or shorten the prompt"
            raise BackendError(f"llama.cpp failed a request: {error.get('message', error)}{hint}")
        return parse_chat_response(body, time.perf_counter() - start, request.sampling.top_logprobs > 0)

    def complete(self, requests: list[ChatRequest], progress: bool) -> list[Completion]:
        futures = [self.pool.submit(self.one, request) for request in requests]
        try:
            with tqdm(total=len(requests), desc=f"llama.cpp {self.name}", unit="req", disable=not progress) as bar:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
                    bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.server = None  # the binding stops the server and frees the model when it is collected

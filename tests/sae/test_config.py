"""The pipeline config: strict parsing with messages that name the offending key and its location."""

from __future__ import annotations

import copy

import pytest
import yaml

from sae.config import (
    DEFAULT_CONFIG,
    ConfigError,
    ConfigWarning,
    CorpusConfig,
    LayerConfig,
    PipelineConfig,
    SaeSpec,
    ScoreConfig,
    TrainConfig,
    load_config,
    parse_config,
    resolved_yaml,
)

VALID = {
    "lake": "my-lake",
    "model": {"name": "smollm2-135m-instruct", "dtype": "float32", "device": "cpu"},
    "corpus": {"source": "wikipedia-sample"},
    "n_tokens": 4096,
    "ctx_len": 128,
    "batch_size": 4,
    "seed": 3,
    "layers": [{"hookpoint": "layers.3"}, {"hookpoint": "layers.6", "activations": True}],
    "saes": [
        {"name": "topk-x4", "train": {"expansion_factor": 4, "k": 16, "lr": 1e-3}},
        {"name": "pretrained", "path": "/saes/{hookpoint}"},
    ],
}


def _raw(**changes) -> dict:
    raw = copy.deepcopy(VALID)
    raw.update(changes)
    return raw


def _error(raw: dict, source: str = "config") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source=source)
    return str(info.value)


def test_parse_valid_config():
    config = parse_config(copy.deepcopy(VALID))
    assert isinstance(config, PipelineConfig)
    assert config.lake == "my-lake"
    assert config.model.dtype == "float32" and config.model.device == "cpu"
    assert config.corpus == CorpusConfig(source="wikipedia-sample")
    assert config.n_tokens == 4096 and config.ctx_len == 128 and config.n_contexts == 32
    assert config.hookpoints == ["layers.3", "layers.6"]
    assert config.layers[1] == LayerConfig(hookpoint="layers.6", activations=True)
    assert config.sae_names == ["topk-x4", "pretrained"]
    train = config.sae("topk-x4").train
    assert isinstance(train, TrainConfig)
    assert (train.expansion_factor, train.k, train.lr) == (4, 16, 1e-3)
    assert train.epochs == TrainConfig().epochs  # defaults fill the keys left out
    spec = config.sae("pretrained")
    assert isinstance(spec, SaeSpec) and spec.train is None
    assert str(spec.path_for("layers.6")) == "/saes/layers.6"
    # A trained SAE means activations are written by default.
    assert config.writes_activations("layers.3") is True


def test_int_given_for_float_is_converted():
    raw = _raw(saes=[{"name": "a", "train": {"lr": 1, "auxk_alpha": 0}}])
    train = parse_config(raw).saes[0].train
    assert isinstance(train.lr, float) and train.lr == 1.0
    assert isinstance(train.auxk_alpha, float)


def test_unknown_top_level_key_names_key_and_suggests():
    raw = _raw()
    raw["n_tokns"] = 1000
    message = _error(raw, source="my.yaml")
    assert "'n_tokns'" in message
    assert "'n_tokens'" in message
    assert "did you mean" in message
    assert "my.yaml" in message


def test_unknown_nested_key_names_location():
    raw = _raw(saes=[{"name": "topk-x4", "train": {"expansion": 4}}])
    message = _error(raw)
    assert "'expansion'" in message
    assert "saes[0].train" in message
    assert "'expansion_factor'" in message


def test_unknown_key_in_model_names_location():
    message = _error(_raw(model={"nmae": "x"}))
    assert "'nmae'" in message and "model" in message and "'name'" in message


@pytest.mark.parametrize(
    ("changes", "where", "expected"),
    [
        ({"n_tokens": "lots"}, "n_tokens", "int"),
        ({"ctx_len": True}, "ctx_len", "int"),  # a bool is not an int here
        ({"lake": 5}, "lake", "str"),
        ({"layers": {"hookpoint": "layers.3"}}, "layers", "list"),
        ({"model": "smollm2"}, "model", "mapping"),
        ({"layers": [{"hookpoint": "layers.3", "activations": "yes"}]}, "layers[0].activations", "bool"),
        ({"saes": [{"name": "a", "train": {"k": 1.5}}]}, "saes[0].train.k", "int"),
    ],
)
def test_wrong_type_raises_and_names_key(changes, where, expected):
    message = _error(_raw(**changes))
    assert where in message
    assert expected in message


def test_wrong_type_for_float_field_raises():
    message = _error(_raw(saes=[{"name": "a", "train": {"lr": "fast"}}]))
    assert "saes[0].train.lr" in message


def test_missing_required_key_is_named():
    message = _error(_raw(layers=[{"activations": True}]))
    assert "'hookpoint'" in message
    assert "layers[0]" in message


def test_sae_with_both_train_and_path_raises():
    message = _error(_raw(saes=[{"name": "both", "train": {"k": 8}, "path": "/x"}]))
    assert "'both'" in message
    assert "train" in message and "path" in message


def test_sae_with_neither_train_nor_path_raises():
    message = _error(_raw(saes=[{"name": "neither"}]))
    assert "'neither'" in message
    assert "train" in message and "path" in message


def test_files_corpus_without_paths_raises():
    message = _error(_raw(corpus={"source": "files"}))
    assert "corpus.paths" in message
    assert "'files'" in message


def test_files_corpus_with_paths_parses():
    config = parse_config(_raw(corpus={"source": "files", "paths": ["a.txt", "b.jsonl"], "text_column": "body"}))
    assert config.corpus.paths == ("a.txt", "b.jsonl")
    assert config.corpus.text_column == "body"


def test_unknown_corpus_source_and_dtype_raise():
    assert "'web'" in _error(_raw(corpus={"source": "web"}))
    assert "'float64'" in _error(_raw(model={"dtype": "float64"}))


def test_semantic_checks_name_the_setting():
    assert "ctx_len" in _error(_raw(ctx_len=1))
    assert "n_tokens" in _error(_raw(n_tokens=10, ctx_len=128))
    assert "layers" in _error(_raw(layers=[]))
    assert "saes" in _error(_raw(saes=[]))
    assert "layers.3" in _error(_raw(layers=[{"hookpoint": "layers.3"}, {"hookpoint": "layers.3"}]))
    assert "topk-x4" in _error(_raw(saes=[{"name": "topk-x4", "train": {}}, {"name": "topk-x4", "path": "/p"}]))
    assert "'bad name'" in _error(_raw(saes=[{"name": "bad name", "train": {}}]))
    message = _error(_raw(layers=[{"hookpoint": "layers.3", "activations": False}]))
    assert "layers.3" in message and "activations" in message


def test_load_default_demo_config():
    config = load_config()
    assert DEFAULT_CONFIG.name == "demo.yaml"
    assert len(config.layers) >= 1
    assert len(config.saes) >= 1
    assert config == load_config(DEFAULT_CONFIG)
    assert config.n_contexts >= 1


def test_load_config_from_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("layers:\n  - hookpoint: layers.1\nsaes:\n  - name: s\n    train: {k: 4}\nn_tokns: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "'n_tokns'" in str(info.value)
    path.write_text("layers:\n  - hookpoint: layers.1\nsaes:\n  - name: s\n    train: {k: 4}\n")
    assert load_config(path).saes[0].train.k == 4


def test_load_config_missing_file_raises(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_config_invalid_yaml_raises(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("layers: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------ enumerated choices

DEVICE_VALUES = "valid: auto, cpu, cuda, cuda:N"
DTYPE_VALUES = "valid: auto, float32, bfloat16, float16"


@pytest.mark.parametrize(
    ("changes", "where", "suggestion", "valid"),
    [
        ({"model": {"device": "cpuu"}}, "model.device 'cpuu'", "cpu", DEVICE_VALUES),
        ({"model": {"dtype": "bfloat61"}}, "model.dtype 'bfloat61'", "bfloat16", DTYPE_VALUES),
        ({"corpus": {"source": "file", "paths": ["a.txt"]}}, "corpus.source 'file'", "files",
         "valid: wikipedia-sample, huggingface, files"),
        ({"explain": {"llm": {"backend": "vlm"}}}, "explain.llm.backend 'vlm'", "vllm",
         "valid: local, openai, vllm, tokens"),
        ({"score": {"llm": {"backend": "openia"}}}, "score.llm.backend 'openia'", "openai",
         "valid: local, openai, vllm"),  # no `tokens` here: the token baseline explains, it cannot score
        ({"explain": {"llm": {"runtime": "llamcpp"}}}, "explain.llm.runtime 'llamcpp'", "llamacpp",
         "valid: auto, transformers, llamacpp"),
        ({"explain": {"llm": {"device": "cude"}}}, "explain.llm.device 'cude'", "cuda", DEVICE_VALUES),
        ({"explain": {"llm": {"dtype": "float61"}}}, "explain.llm.dtype 'float61'", "float16", DTYPE_VALUES),
        ({"score": {"llm": {"runtime": "transformer"}}}, "score.llm.runtime 'transformer'", "transformers",
         "valid: auto, transformers, llamacpp"),
        ({"score": {"llm": {"device": "cpu:0"}}}, "score.llm.device 'cpu:0'", "cpu", DEVICE_VALUES),
        ({"explain": {"latents": "sampel"}}, "explain.latents 'sampel'", "sample", "valid: all, first, sample, list"),
        ({"score": {"scorers": ["detection", "fuzing"]}}, "score.scorers 'fuzing'", "fuzzing",
         "valid: detection, fuzzing, embedding, surprisal, intruder, simulation, intervention"),
        ({"score": {"embedder_device": "mpss"}}, "score.embedder_device 'mpss'", "mps",
         "valid: auto, cpu, mps, cuda, cuda:N"),
    ],
)
def test_misspelled_choice_lists_the_valid_values(changes, where, suggestion, valid):
    message = _error(_raw(**changes), source="my.yaml")
    assert message.startswith(f"my.yaml: {where.split('.')[0]}")
    assert f"{where} is unknown" in message
    assert f"did you mean {suggestion!r}?" in message
    assert message.endswith(valid)


def test_a_choice_far_from_every_value_lists_them_without_a_guess():
    message = _error(_raw(model={"device": "metal"}))
    assert "did you mean" not in message and message.endswith(DEVICE_VALUES)


def test_any_gpu_index_is_a_device():
    config = parse_config(_raw(model={"device": "cuda:3"}, explain={"llm": {"device": "cuda:12"}}))
    assert (config.model.device, config.explain.llm.device) == ("cuda:3", "cuda:12")
    assert "'cuda:x'" in _error(_raw(model={"device": "cuda:x"}))


def test_corpus_files_need_a_readable_suffix():
    message = _error(_raw(corpus={"source": "files", "paths": ["a.txt", "notes.csv"]}))
    assert "notes.csv" in message and ".txt, .jsonl, .parquet" in message


# -------------------------------------------------------------------------------------------- cross-field rules


def test_scoring_needs_activating_and_silent_test_windows():
    message = _error(_raw(examples={"n_test": 0}))
    assert "examples.n_test is 0" in message and "score.scorers: []" in message
    message = _error(_raw(examples={"n_random": 0, "n_neighbour": 0}))
    assert "silent test windows" in message
    # Hard negatives count as silent windows only where neighbour latents are searched.
    assert "silent" in _error(_raw(examples={"n_random": 0, "n_neighbour": 5, "neighbour_latents": 0}))
    parse_config(_raw(examples={"n_random": 0, "n_neighbour": 5}, score={"n_silent": 5}))
    parse_config(_raw(examples={"n_test": 0, "n_random": 0}, score={"scorers": []}))  # nothing is scored


def test_more_scoring_windows_than_drawn_warn():
    with pytest.warns(ConfigWarning, match=r"score\.n_activating \(30\) exceeds .*examples\.n_test = 25"):
        parse_config(_raw(examples={"n_test": 25}, score={"n_activating": 30}))
    with pytest.warns(ConfigWarning, match=r"score\.n_silent \(40\) exceeds .* = 35"):
        parse_config(_raw(examples={"n_random": 30, "n_neighbour": 5}, score={"n_silent": 40}))


def test_explain_rules():
    assert "n_examples (41)" in _error(_raw(explain={"n_examples": 41}))  # n_top + n_train_quantile = 40
    assert "n_train_random" in _error(_raw(explain={"prompt": {"contrastive": True}}))
    assert "latent_ids" in _error(_raw(explain={"latents": "list", "latent_ids": [3, -1]}))
    assert "window" in _error(_raw(examples={"window": 200}))  # ctx_len is 128


# ------------------------------------------------------------------------------- what load_config needs locally


def _write(tmp_path, raw: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


TRAINED_ONLY = {"saes": [VALID["saes"][0]]}  # VALID's pretrained SAE folder does not exist on this machine


def test_pretrained_sae_folder_must_exist_for_every_hookpoint(tmp_path):
    (tmp_path / "saes" / "layers.3").mkdir(parents=True)
    raw = _raw(saes=[{"name": "pretrained", "path": str(tmp_path / "saes" / "{hookpoint}")}])
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(tmp_path / "saes" / "layers.6") in message and "'pretrained'" in message and str(path) in message
    (tmp_path / "saes" / "layers.6").mkdir()
    assert load_config(path).sae("pretrained").path_for("layers.6").is_dir()


def test_corpus_files_must_exist(tmp_path):
    path = _write(tmp_path, _raw(corpus={"source": "files", "paths": [str(tmp_path / "gone.txt")]}, **TRAINED_ONLY))
    with pytest.raises(ConfigError, match=r"corpus file .*gone\.txt does not exist"):
        load_config(path)
    (tmp_path / "gone.txt").write_text("here now")
    assert load_config(path).corpus.paths == (str(tmp_path / "gone.txt"),)


def test_openai_backend_needs_a_base_url(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = _write(tmp_path, _raw(score={"llm": {"backend": "openai", "model": "m"}}, **TRAINED_ONLY))
    with pytest.raises(ConfigError, match=r"score\.llm\.backend 'openai' needs the server's base URL"):
        load_config(path)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert load_config(path).score.llm.backend == "openai"


def test_config_file_that_is_not_text_names_it(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"lake: x\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"config\.yaml is not UTF-8 text \(undecodable byte at offset 8\)"):
        load_config(path)


# ----------------------------------------------------------------------------------------------- resolved YAML


def test_resolved_yaml_round_trips_and_hides_the_api_key():
    config = parse_config(_raw(explain={"llm": {"backend": "openai", "api_key": "sk-secret-123"}}))
    text = resolved_yaml(config)
    assert "sk-secret" not in text
    data = yaml.safe_load(text)
    assert data["explain"]["llm"]["api_key"] == "<set>"
    assert data["score"]["llm"] is None and data["score"]["n_silent"] == ScoreConfig().n_silent  # defaults shown
    data["explain"]["llm"]["api_key"] = "sk-secret-123"
    assert parse_config(data) == config


def test_the_token_baseline_alone_needs_an_llm_for_the_llm_scorers():
    alone = {"llm": {"backend": "tokens"}}
    message = _error(_raw(explain=alone, score={"scorers": ["detection", "embedding"]}))
    assert "['detection']" in message and "score.llm" in message
    assert parse_config(_raw(explain=alone, score={"scorers": ["embedding"]})).explain.llm.backend == "tokens"
    judged = parse_config(_raw(explain=alone, score={"scorers": ["detection"], "llm": {"backend": "local"}}))
    assert judged.score.llm.backend == "local"
    assert "score.llm.backend 'tokens' is unknown" in _error(_raw(score={"llm": {"backend": "tokens"}}))
    assert "n_latents caps" in _error(_raw(score={"n_latents": 0}))
    assert "exceeds the tokens" in _error(_raw(explain={"n_logit_tokens": 3, "prompt": {"promoted_tokens": 5}}))


def test_surprisal_needs_a_backend_with_prompt_log_probs():
    scores = {"scorers": ["detection", "surprisal"]}
    assert parse_config(_raw(score=scores)).score.scorers == ("detection", "surprisal")
    openai = {"backend": "openai", "base_url": "http://127.0.0.1:8000/v1"}
    for changes in ({"score": {**scores, "llm": openai}}, {"score": scores, "explain": {"llm": openai}}):
        message = _error(_raw(**changes))
        assert "surprisal" in message and "'local' or 'vllm'" in message
    # The scorer's own LLM decides: an openai explainer with a local scorer is fine.
    parse_config(_raw(score={**scores, "llm": {"backend": "local"}}, explain={"llm": openai}))


@pytest.mark.parametrize("score, needle", [
    ({"intruder_k": 0}, "intruder_questions and intruder_k"),
    ({"intruder_questions": 0}, "intruder_questions and intruder_k"),
    ({"simulation_activating": 0}, "simulation_activating must be positive"),
    ({"simulation_silent": -1}, "simulation_silent 0 or more"),
    ({"intervention_prompts": []}, "intervention_prompts: list at least one prompt"),
    ({"intervention_prompts": ["ok", " "]}, "none of them empty"),
    ({"intervention_strengths": [1.0, 0.0]}, "positive multiples of the latent's max_act"),
    ({"intervention_tokens": 0}, "intervention_tokens positive"),
])
def test_the_intruder_simulation_and_intervention_settings_are_checked(score, needle):
    assert needle in _error(_raw(score=score))


def test_the_new_scorers_parse_with_their_settings():
    cfg = parse_config(_raw(score={"scorers": ["intruder", "simulation", "intervention"], "intruder_k": 3,
                                   "intervention_strengths": [2, 8], "intervention_prompts": ["Once"]}))
    assert cfg.score.intervention_strengths == (2.0, 8.0) and cfg.score.intervention_prompts == ("Once",)

"""The pipeline config: strict parsing with messages that name the offending key and its location."""

from __future__ import annotations

import copy

import pytest

from sae.config import (
    DEFAULT_CONFIG,
    ConfigError,
    CorpusConfig,
    LayerConfig,
    PipelineConfig,
    SaeSpec,
    TrainConfig,
    load_config,
    parse_config,
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


def test_fingerprint_changes_with_the_named_settings():
    a = parse_config(_raw())
    b = parse_config(_raw(seed=4))
    assert a.fingerprint("model", "corpus") == b.fingerprint("model", "corpus")
    assert a.fingerprint("seed") != b.fingerprint("seed")

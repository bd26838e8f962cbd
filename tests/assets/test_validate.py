"""`saelake validate`: the config checked in full, printed with every default; one line when it is wrong."""

from __future__ import annotations

import dataclasses

import yaml

from assets.cli import main
from sae.config import BUILTIN_MODEL, DEFAULT_CONFIG, PipelineConfig, load_config, parse_config

from ..conftest import write_config


def test_validate_prints_the_demo_config_resolved(tmp_path, converted_model, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo's relative lake, with the model already converted
    (tmp_path / "lake" / "models").mkdir(parents=True)
    (tmp_path / "lake" / "models" / BUILTIN_MODEL).symlink_to(converted_model, target_is_directory=True)
    assert main(["validate", str(DEFAULT_CONFIG)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    data = yaml.safe_load(out.out)
    assert list(data) == [f.name for f in dataclasses.fields(PipelineConfig)]
    assert data["explain"]["llm"]["runtime"] == "auto" and data["examples"]["n_test"] == 50  # defaults filled in
    assert parse_config(data) == load_config(DEFAULT_CONFIG)


def test_validate_a_bad_config_exits_1_with_one_line(tmp_path, converted_model, capsys):
    path = write_config(tmp_path, converted_model, explain={"llm": {"runtime": "llamcpp"}})
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (f"saelake validate: {path}: explain.llm.runtime 'llamcpp' is unknown; "
                       "did you mean 'llamacpp'? valid: auto, transformers, llamacpp\n")
    path.write_text("layers: [\n  - hookpoint: layers.1\n")  # PyYAML's own message spans several lines
    assert main(["--config", str(path), "validate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"saelake validate: {path} is not valid YAML") and err.count("\n") == 1


def test_validate_refuses_what_the_model_cannot_serve(tmp_path, converted_model, capsys):
    path = write_config(tmp_path, converted_model, ctx_len=9000, n_tokens=9000)
    assert main(["validate", str(path)]) == 1
    assert "ctx_len 9000 exceeds the 8192 positions" in capsys.readouterr().err


def test_validate_never_prints_the_api_key_and_shows_warnings(tmp_path, converted_model, capsys):
    path = write_config(tmp_path, converted_model, examples={"n_test": 10},
                        score={"n_activating": 12, "llm": {"backend": "openai", "base_url": "http://127.0.0.1:1/v1",
                                                           "api_key": "sk-very-secret"}})
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr()
    assert "sk-very-secret" not in out.out + out.err
    assert yaml.safe_load(out.out)["score"]["llm"]["api_key"] == "<set>"
    assert out.err.startswith("saelake validate: warning: ") and "score.n_activating (12)" in out.err


def test_run_with_a_misspelled_choice_fails_before_any_stage(tmp_path, converted_model, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    path = write_config(tmp_path, converted_model, explain={"llm": {"runtime": "llamcpp"}})
    assert main(["--config", str(path), "run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "explain.llm.runtime 'llamcpp' is unknown; did you mean 'llamacpp'?" in err
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == ["models"]  # no stage wrote anything
    assert not (tmp_path / "home").exists()  # not even the Dagster instance was created

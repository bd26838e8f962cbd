"""Where `saelake` puts the Dagster instance and the lake, and how `saelake ui` starts Dagster."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets import cli
from sae.config import load_config

pytestmark = pytest.mark.usefixtures("clean_cli_env")


def test_the_instance_defaults_to_dot_dagster_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = cli.prepare_instance()
    assert home == tmp_path / ".dagster"
    assert os.environ["DAGSTER_HOME"] == str(home)
    with dg.DagsterInstance.get() as instance:
        assert Path(instance.root_directory) == home
        assert "sqlite" in type(instance.run_storage).__name__.lower()
        assert instance.get_settings("telemetry") == {"enabled": False}
        assert instance.get_settings("concurrency")["pools"]["default_limit"] == 1
    assert (home / "history").is_dir()  # run history lives inside the folder


def test_an_explicit_dagster_home_and_its_settings_are_kept(tmp_path, monkeypatch):
    home = tmp_path / "my-instance"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert cli.prepare_instance() == home
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    assert not (tmp_path / ".dagster").exists()


def test_lake_option_reaches_load_config_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(config=None, lake="elsewhere/lake")
    path = cli._config_path(args)
    assert os.environ["SAELAKE_LAKE"] == str(tmp_path / "elsewhere" / "lake")
    assert load_config(path).lake == str(tmp_path / "elsewhere" / "lake")
    monkeypatch.setenv("SAELAKE_LAKE", "")
    assert load_config(path).lake == "lake"  # the demo config's, relative to the working directory


def test_ui_runs_the_dagster_next_to_python_from_the_working_directory(tmp_path, monkeypatch):
    calls = []

    def call(command, **kwargs):
        calls.append((command, kwargs, os.getcwd(), dict(os.environ)))
        return 0

    # subprocess.call is replaced so no web server starts; everything before it is the real command.
    monkeypatch.setattr(subprocess, "call", call)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--lake", "lake2", "ui", "--port", "3999"]) == 0
    ((command, kwargs, cwd, env),) = calls
    assert command[0] == str(Path(sys.executable).with_name("dagster")) and Path(command[0]).exists()
    assert command[1:4] == ["dev", "-m", "assets"] and "3999" in command
    assert kwargs == {} and cwd == str(tmp_path)
    assert env["DAGSTER_HOME"] == str(tmp_path / ".dagster")
    assert env["SAELAKE_LAKE"] == str(tmp_path / "lake2")
    assert (tmp_path / ".dagster" / "dagster.yaml").exists()

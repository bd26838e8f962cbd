"""The Dagster instance on Postgres: a real `saelake run` against a real server (the session's), its history read
back by a fresh instance and straight from the database; and the errors that say how to fix a broken setup."""

from __future__ import annotations

import sys

import dagster as dg
import psycopg2
import pytest
import yaml

from assets import cli
from assets.instance import POSTGRES_ENV, prepare_instance

from ..conftest import free_port

pytestmark = pytest.mark.usefixtures("clean_cli_env")


@pytest.fixture
def postgres_env(postgres_server, monkeypatch) -> dict[str, str]:
    """DAGSTER_PG_* set to a new database of the session's server."""
    env = postgres_server.new_database()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_a_saelake_run_on_postgres_is_read_back_by_a_fresh_instance(tmp_path, monkeypatch, capfd, postgres_env,
                                                                    tiny_config_path):
    home = tmp_path / "instance"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert cli.main(["--config", str(tiny_config_path), "run", "--select", "contexts"]) == 0

    settings = (home / "dagster.yaml").read_text()
    assert yaml.safe_load(settings)["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert postgres_env["DAGSTER_PG_PASSWORD"] not in settings + "".join(capfd.readouterr())
    assert not list(home.rglob("*.db"))  # no sqlite history beside it

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        [run] = instance.get_runs()
        assert (run.job_name, run.status) == ("corpus", dg.DagsterRunStatus.SUCCESS)
        event = instance.get_latest_materialization_event(dg.AssetKey("contexts"))
        assert event.run_id == run.run_id
        assert event.asset_materialization.metadata["contexts"].value == 4096 // 64  # the tiny config's
        kinds = [record.dagster_event.event_type for record in instance.all_logs(run.run_id) if record.is_dagster_event]
        assert kinds[-1] == dg.DagsterEventType.RUN_SUCCESS
        assert instance.event_log_storage.get_concurrency_info(cli.GPU_POOL).slot_count == 1

    # The history is in the server's tables, not only in what Dagster says of them.
    connection = psycopg2.connect(host="127.0.0.1", port=postgres_env["DAGSTER_PG_PORT"],
                                  user=postgres_env["DAGSTER_PG_USERNAME"],
                                  password=postgres_env["DAGSTER_PG_PASSWORD"], dbname=postgres_env["DAGSTER_PG_DB"])
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT run_id, status FROM runs")
        assert cursor.fetchall() == [(run.run_id, "SUCCESS")]
    finally:
        connection.close()


def test_a_wrong_password_fails_with_the_server_and_without_the_password(tmp_path, monkeypatch, postgres_env):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-the-password")
    with pytest.raises(RuntimeError) as failure:
        prepare_instance()
    message = str(failure.value)
    where = f"saelake@127.0.0.1:{postgres_env['DAGSTER_PG_PORT']}/{postgres_env['DAGSTER_PG_DB']}"
    assert "cannot connect to the Postgres server" in message and where in message
    assert "password authentication failed" in message
    assert "not-the-password" not in message


def set_unreachable_postgres(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "instance"))
    for name, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(free_port()),
                        "DAGSTER_PG_USERNAME": "saelake", "DAGSTER_PG_PASSWORD": "s3cret-word",
                        "DAGSTER_PG_DB": "dagster"}.items():
        monkeypatch.setenv(name, value)


def test_a_server_out_of_reach_fails_saelake_run_in_one_line_without_the_password(tmp_path, monkeypatch, capsys,
                                                                                  tiny_config_path):
    set_unreachable_postgres(monkeypatch, tmp_path)
    assert cli.main(["--config", str(tiny_config_path), "run", "--select", "contexts"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("saelake run: cannot connect to the Postgres server of the Dagster instance "
                          "(saelake@127.0.0.1:")
    assert "Connection refused" in err and "start the server" in err
    assert "s3cret-word" not in out + err


def test_without_dagster_postgres_the_error_names_the_extra(tmp_path, monkeypatch):
    set_unreachable_postgres(monkeypatch, tmp_path)
    for module in [name for name in sys.modules if name.split(".")[0] == "dagster_postgres"] + ["dagster_postgres"]:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    with pytest.raises(RuntimeError, match=r"needs the dagster-postgres package .*pip install 'saelake\[postgres\]'"):
        prepare_instance()


def test_an_unset_variable_of_a_postgres_instance_is_named(tmp_path, monkeypatch):
    set_unreachable_postgres(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError):
        prepare_instance()  # writes the Postgres dagster.yaml, then finds no server
    monkeypatch.delenv(POSTGRES_ENV["password"])
    with pytest.raises(RuntimeError, match=r"dagster.yaml reads DAGSTER_PG_PASSWORD from the environment: set it"):
        prepare_instance()


def test_postgres_asked_of_an_instance_folder_kept_in_sqlite_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    prepare_instance()  # sqlite, as before the team moved to Postgres
    monkeypatch.setenv("DAGSTER_PG_HOST", "127.0.0.1")
    with pytest.raises(RuntimeError, match="DAGSTER_PG_HOST asks for Dagster's storage on Postgres, but .* was "
                                           "written before without it"):
        prepare_instance()
    assert "storage" not in yaml.safe_load((tmp_path / "dagster.yaml").read_text())

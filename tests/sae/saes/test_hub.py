"""Pretrained SAEs from the Hugging Face Hub. The download itself (huggingface_hub.snapshot_download) is
replaced by a local copy of a repo layout written by the test: no test touches the network."""

import shutil

import huggingface_hub
import pytest
import torch

from sae.config import load_config
from sae.saes.codecs import load_sae
from sae.saes.stage import build_sae, load_stored_sae

from ...conftest import write_config
from ..test_bad_inputs import write_sparsify


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A sparsify-style repo (one folder per hookpoint) served from disk; records each download request."""
    repo = tmp_path / "hub" / "org--sae-repo"
    for hookpoint in ("layers.1", "layers.3"):
        write_sparsify(repo / hookpoint, d_in=576)
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        target = tmp_path / "hf-cache" / repo_id.replace("/", "--")
        for folder in repo.iterdir():
            if allow_patterns is None or any(p.split("/")[0] == folder.name for p in allow_patterns):
                shutil.copytree(folder, target / folder.name, dirs_exist_ok=True)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repo, calls


def test_a_hub_sae_downloads_only_its_hookpoint_folder_and_loads_like_a_local_one(tmp_path, converted_model,
                                                                                   fake_hub):
    repo, calls = fake_hub
    cfg = load_config(write_config(
        tmp_path, converted_model, layers=[{"hookpoint": "layers.3", "activations": False}],
        saes=[{"name": "hub-sae", "hub": "org/sae-repo", "revision": "v1"}],
    ))
    result = build_sae(cfg, "layers.3", "hub-sae", progress=False)
    assert calls == [{"repo_id": "org/sae-repo", "revision": "v1", "allow_patterns": ["layers.3/*"]}]
    local = load_stored_sae(cfg, "layers.3", "hub-sae")
    reference = load_sae(repo / "layers.3")
    x = torch.randn(8, 576)
    torch.testing.assert_close(local.encode_dense(x), reference.encode_dense(x))
    assert result.row["k"] == 4 and result.written_format == "sparsify"

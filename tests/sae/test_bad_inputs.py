"""Bad inputs stop early with a message that says what was wrong and how to fix it."""

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from assets.cli import main
from sae.config import load_config
from sae.corpus.documents import CorpusError
from sae.corpus.stage import build_contexts
from sae.latents.hookpoints import HookpointError
from sae.latents.stage import cache_activations
from sae.saes.codecs import SaeFormatError
from sae.saes.stage import build_sae

from ..conftest import write_config


def write_sparsify(folder, d_in: int, num_latents: int = 64, k: int = 4) -> None:
    folder.mkdir(parents=True)
    save_file(
        {"encoder.weight": torch.randn(num_latents, d_in), "encoder.bias": torch.zeros(num_latents),
         "W_dec": torch.randn(num_latents, d_in), "b_dec": torch.zeros(d_in)},
        folder / "sae.safetensors",
    )
    (folder / "cfg.json").write_text(json.dumps({"k": k, "num_latents": num_latents}))


def test_d_in_mismatch_names_both_sizes(tmp_path, converted_model):
    write_sparsify(tmp_path / "saes" / "layers.1", d_in=32)
    path = write_config(tmp_path, converted_model, layers=[{"hookpoint": "layers.1", "activations": False}],
                        saes=[{"name": "foreign", "path": str(tmp_path / "saes" / "{hookpoint}")}])
    with pytest.raises(ValueError, match=r"d_in=32.*hidden size at this hookpoint is 576"):
        build_sae(load_config(path), "layers.1", "foreign", progress=False)


def test_missing_sae_file_says_which_file(tmp_path, converted_model):
    folder = tmp_path / "saes" / "layers.1"
    write_sparsify(folder, d_in=576)
    (folder / "sae.safetensors").unlink()
    path = write_config(tmp_path, converted_model, layers=[{"hookpoint": "layers.1", "activations": False}],
                        saes=[{"name": "foreign", "path": str(tmp_path / "saes" / "{hookpoint}")}])
    with pytest.raises(SaeFormatError, match=r"sae\.safetensors") as err:
        build_sae(load_config(path), "layers.1", "foreign", progress=False)
    assert "cfg.json" in str(err.value)  # what was found


def test_unknown_hookpoint_fails_before_caching(tmp_path, converted_model):
    cfg = load_config(write_config(tmp_path, converted_model, layers=[{"hookpoint": "layer.1"}]))
    build_contexts(cfg)
    with pytest.raises(HookpointError, match=r"unknown hookpoint 'layer\.1'.*layers\.0 \.\.\. layers\.29"):
        cache_activations(cfg, cfg.hookpoints, progress=False)
    assert not (tmp_path / "lake" / "activations").exists()


def test_empty_corpus(tmp_path, converted_model):
    (tmp_path / "empty.txt").write_text("   \n")
    cfg = load_config(write_config(tmp_path, converted_model,
                                   corpus={"source": "files", "paths": [str(tmp_path / "empty.txt")]}))
    with pytest.raises(CorpusError, match="no text"):
        build_contexts(cfg)
    assert not (tmp_path / "lake" / "contexts").exists()


def test_cli_reports_an_unknown_config_key(tmp_path, converted_model, capsys):
    path = write_config(tmp_path, converted_model)
    raw = yaml.safe_load(path.read_text())
    raw["batchsize"] = 4
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path), "run"]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'batchsize'" in err and "did you mean 'batch_size'" in err

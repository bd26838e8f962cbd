"""Bad inputs stop early with a message that says what was wrong and how to fix it."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import save_file

from assets.cli import main
from sae.config import CorpusConfig, load_config
from sae.corpus.documents import CorpusError, iter_documents
from sae.corpus.stage import build_contexts
from sae.latents.hookpoints import HookpointError
from sae.latents.stage import cache_activations
from sae.saes.codecs import Sae, SaeConfig, SaeFormatError, load_sae, save_sae
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


# ------------------------------------------------------------------------------- files that cannot be read


def _sae(architecture: str, d_in: int = 8, num_latents: int = 16) -> Sae:
    generator = torch.Generator().manual_seed(0)
    config = SaeConfig(architecture, d_in, num_latents, k=4 if architecture == "topk" else None)
    return Sae(config, torch.randn(d_in, num_latents, generator=generator), torch.zeros(num_latents),
               torch.randn(num_latents, d_in, generator=generator), torch.zeros(d_in))


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(("architecture", "name"), [("topk", "sae.safetensors"), ("relu", "sae_weights.safetensors")])
def test_truncated_safetensors_names_the_file_and_the_fix(tmp_path, architecture, name):
    folder = tmp_path / "my-sae"
    save_sae(_sae(architecture), folder)
    _truncate(folder / name)
    with pytest.raises(SaeFormatError) as info:
        load_sae(folder)
    message = str(info.value)
    assert f"SAE file {folder / name} cannot be read" in message and "truncated or corrupt" in message
    assert "re-download or re-export it" in message


def test_corrupt_sae_in_the_lake_names_its_partition(tmp_path):
    partition = tmp_path / "lake" / "saes" / "layer=layers.1" / "sae=topk-x2"
    save_sae(_sae("topk"), partition)
    (partition / "cfg.json").write_text('{"k": 4, "num_latents"')
    with pytest.raises(SaeFormatError, match=rf"{partition / 'cfg.json'} cannot be read .*"
                                              rf"delete the SAE partition {partition} to rebuild it"):
        load_sae(partition)


def test_truncated_gemmascope_params_names_the_file(tmp_path):
    sae = _sae("relu")
    arrays = {name: getattr(sae, name).detach().numpy() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    np.savez(tmp_path / "params.npz", threshold=np.zeros(16, np.float32), **arrays)
    assert load_sae(tmp_path).cfg.architecture == "jumprelu"  # the untouched file loads
    _truncate(tmp_path / "params.npz", keep=0.9)
    with pytest.raises(SaeFormatError, match=r"params\.npz cannot be read"):
        load_sae(tmp_path)


def _corpus(path):
    return list(iter_documents(CorpusConfig(source="files", paths=(str(path),))))


def test_binary_txt_corpus_names_the_file_and_the_offset(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("plain start ".encode() + bytes([0x89, 0x50, 0x4E, 0x47, 0xFF, 0x00]))
    with pytest.raises(CorpusError) as info:
        _corpus(path)
    message = str(info.value)
    assert f"corpus file {path} is not UTF-8 text (undecodable byte at offset 12)" in message
    assert ".txt" in message and ".jsonl" in message and ".parquet" in message


def test_jsonl_corpus_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two",\n')
    with pytest.raises(CorpusError, match=rf"{path}:3 is not valid JSON"):
        _corpus(path)
    first = '{"text": "one"}\n'.encode()
    path.write_bytes(first + b'{"text": "\xff"}\n')
    offset = len(first) + len('{"text": "')
    with pytest.raises(CorpusError, match=rf"{path} is not UTF-8 text \(undecodable byte at offset {offset}\)"):
        _corpus(path)
    path.write_text('{"text": "one"}\n{"text": 7}\n')
    with pytest.raises(CorpusError, match=rf"{path}:2: field 'text' is not a string but int"):
        _corpus(path)


def test_corrupt_parquet_corpus_names_the_file(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["a document"] * 1000}), path)
    _truncate(path)
    with pytest.raises(CorpusError, match=rf"corpus file {path} is not a readable Parquet file"):
        _corpus(path)
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(CorpusError, match=r"column 'text' \(corpus.text_column\) holds int64, not strings"):
        _corpus(path)

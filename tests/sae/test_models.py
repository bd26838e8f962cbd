"""Settings the subject model cannot serve are refused before any work, from its config alone."""

from __future__ import annotations

import pytest
import torch

from sae.config import DTYPES, ConfigError, load_config
from sae.models import check_against_model, resolve_device, resolve_dtype

from ..conftest import write_config


def _check(tmp_path, converted_model, **overrides) -> None:
    check_against_model(load_config(write_config(tmp_path, converted_model, **overrides)))


def test_the_tiny_config_fits_the_model(tmp_path, converted_model):
    _check(tmp_path, converted_model)  # no error


def test_ctx_len_beyond_the_position_embeddings_is_refused(tmp_path, converted_model):
    with pytest.raises(ConfigError, match=r"ctx_len 9000 exceeds the 8192 positions of smollm2-135m-instruct "
                                          r"\(max_position_embeddings\): set ctx_len to at most 8192"):
        _check(tmp_path, converted_model, ctx_len=9000, n_tokens=18_000)
    _check(tmp_path, converted_model, ctx_len=8192, n_tokens=8192)


def test_hookpoint_beyond_the_blocks_is_refused(tmp_path, converted_model):
    with pytest.raises(ConfigError, match=r"'layers\.99' is beyond the 30 blocks .* layers\.0 \.\.\. layers\.29"):
        _check(tmp_path, converted_model, layers=[{"hookpoint": "layers.3"}, {"hookpoint": "layers.99"}])
    _check(tmp_path, converted_model, layers=[{"hookpoint": "layers.29.mlp.hidden"}])


def test_hookpoint_that_does_not_parse_is_refused(tmp_path, converted_model):
    with pytest.raises(ConfigError, match=r"layers: unknown hookpoint 'layer\.1'"):
        _check(tmp_path, converted_model, layers=[{"hookpoint": "layer.1"}])


def test_a_local_model_folder_is_read(tmp_path, converted_model):
    with pytest.raises(ConfigError, match="8192 positions"):
        _check(tmp_path, converted_model, model={"name": str(converted_model)}, ctx_len=9000, n_tokens=9000)
    with pytest.raises(ConfigError, match=r"model\.name '/no/such/model' names a folder that does not exist"):
        _check(tmp_path, converted_model, model={"name": "/no/such/model"})


def test_before_the_first_conversion_the_shipped_gguf_is_read(tmp_path):
    lake = tmp_path / "fresh-lake"  # no converted model under it
    cfg = load_config(write_config(tmp_path, tmp_path / "unused", lake=str(lake), ctx_len=9000, n_tokens=9000))
    with pytest.raises(ConfigError, match="8192 positions"):
        check_against_model(cfg)
    assert not (lake / "models" / "smollm2-135m-instruct" / "config.json").exists()  # nothing was converted


def test_a_hub_model_not_in_the_local_cache_is_skipped(tmp_path, converted_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _check(tmp_path, converted_model, model={"name": "saelake-tests/no-such-model"}, ctx_len=9000, n_tokens=9000)


def test_every_dtype_choice_resolves_and_unknown_devices_are_refused():
    cpu = torch.device("cpu")
    assert {name: resolve_dtype(name, cpu) for name in DTYPES} == {
        "auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    with pytest.raises(ConfigError, match="device 'gpu' is unknown; did you mean 'cpu'?"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="dtype 'float64' is unknown"):
        resolve_dtype("float64", cpu)

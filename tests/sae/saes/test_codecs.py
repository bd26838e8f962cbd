"""SAE codecs: the sparsify and SAELens layouts, format detection, save / reload, reconstruction.

Every expected value is computed here from the formulas of the public formats (see DESIGN.md,
"Interop facts"), on small random tensors written to disk by the test itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae.saes.codecs import Sae, SaeConfig, SaeFormatError, SparseCodes, detect_format, load_sae, save_sae

D_IN = 16
NUM_LATENTS = 64
N_TOKENS = 10
K = 4


# --------------------------------------------------------------------------------------------- helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(seed: int = 1, n: int = N_TOKENS) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=_gen(seed))


def _dense_from_codes(codes: SparseCodes, n_rows: int, num_latents: int = NUM_LATENTS) -> torch.Tensor:
    assert codes.rows.shape == codes.latents.shape == codes.values.shape
    dense = torch.zeros(n_rows, num_latents)
    # Each (row, latent) pair must appear at most once, or index_put_ would hide a duplicate.
    pairs = set(zip(codes.rows.tolist(), codes.latents.tolist()))
    assert len(pairs) == codes.rows.numel(), "a (row, latent) pair appears twice in the sparse codes"
    dense[codes.rows, codes.latents] = codes.values.float()
    return dense


def _topk_dense(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Reference TopK: relu the pre-activations, keep the k largest per row, zero the rest."""
    acts = torch.relu(pre)
    values, indices = torch.topk(acts, k, dim=-1)
    return torch.zeros_like(acts).scatter_(-1, indices, values)


def _write_sparsify(folder, *, transcode: bool = False, k: int = K, seed: int = 0, extra_cfg: dict | None = None):
    g = _gen(seed)
    tensors = {
        "encoder.weight": torch.randn(NUM_LATENTS, D_IN, generator=g),
        "encoder.bias": torch.randn(NUM_LATENTS, generator=g) * 0.1,
        "W_dec": torch.randn(NUM_LATENTS, D_IN, generator=g),
        # A large b_dec so that subtracting it (or not) changes the codes visibly.
        "b_dec": torch.randn(D_IN, generator=g) * 2.0,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "sae.safetensors")
    cfg = {"k": k, "num_latents": NUM_LATENTS, "expansion_factor": NUM_LATENTS // D_IN, "transcode": transcode}
    cfg.update(extra_cfg or {})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def _write_saelens(folder, cfg: dict, *, seed: int = 0, threshold: torch.Tensor | None = None):
    g = _gen(seed)
    tensors = {
        "W_enc": torch.randn(D_IN, NUM_LATENTS, generator=g),
        "b_enc": torch.randn(NUM_LATENTS, generator=g) * 0.1,
        "W_dec": torch.randn(NUM_LATENTS, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g) * 2.0,
    }
    if threshold is not None:
        tensors["threshold"] = threshold
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "sae_weights.safetensors")
    full_cfg = {"d_in": D_IN, "d_sae": NUM_LATENTS, "metadata": {"hook_name": "blocks.3.hook_resid_post"}}
    full_cfg.update(cfg)
    (folder / "cfg.json").write_text(json.dumps(full_cfg))
    return tensors


def _random_sae(architecture: str, *, k: int | None = None, seed: int = 0) -> Sae:
    g = _gen(seed)
    cfg = SaeConfig(architecture=architecture, d_in=D_IN, num_latents=NUM_LATENTS, k=k, hookpoint="layers.3")
    threshold = torch.rand(NUM_LATENTS, generator=g) * 2.0 if architecture == "jumprelu" else None
    return Sae(
        cfg,
        W_enc=torch.randn(D_IN, NUM_LATENTS, generator=g),
        b_enc=torch.randn(NUM_LATENTS, generator=g) * 0.1,
        W_dec=torch.randn(NUM_LATENTS, D_IN, generator=g),
        b_dec=torch.randn(D_IN, generator=g),
        threshold=threshold,
    )


def _assert_codes_match(sae: Sae, x: torch.Tensor, expected_dense: torch.Tensor) -> None:
    codes = sae.encode(x)
    assert isinstance(codes, SparseCodes)
    assert bool((codes.values > 0).all()), "sparse codes must hold only positive values"
    torch.testing.assert_close(_dense_from_codes(codes, x.shape[0]), expected_dense)
    torch.testing.assert_close(sae.encode_dense(x), expected_dense)


# --------------------------------------------------------------------------------------------- sparsify


def test_sparsify_encode_matches_reference(tmp_path):
    folder = tmp_path / "layers.3"
    t = _write_sparsify(folder)
    sae = load_sae(folder)
    assert detect_format(folder) == "sparsify"
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K
    assert sae.cfg.d_in == D_IN and sae.num_latents == NUM_LATENTS
    assert sae.cfg.source_format == "sparsify"

    x = _inputs()
    pre = (x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]
    expected = _topk_dense(pre, K)
    # The test is meaningful only if rows really keep k latents out of many positive ones.
    assert int((torch.relu(pre) > 0).sum(dim=1).min()) > K
    assert int((expected > 0).sum()) == N_TOKENS * K
    _assert_codes_match(sae, x, expected)


def test_sparsify_load_sets_hookpoint_argument(tmp_path):
    folder = tmp_path / "sae"
    _write_sparsify(folder)
    assert load_sae(folder, hookpoint="layers.6").cfg.hookpoint == "layers.6"


def test_sparsify_transcoder_does_not_subtract_b_dec(tmp_path):
    folder = tmp_path / "transcoder"
    t = _write_sparsify(folder, transcode=True)
    sae = load_sae(folder)
    assert sae.cfg.transcode is True
    assert sae.cfg.apply_b_dec_to_input is False

    x = _inputs()
    expected = _topk_dense(x @ t["encoder.weight"].T + t["encoder.bias"], K)
    with_b_dec = _topk_dense((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"], K)
    assert not torch.allclose(expected, with_b_dec), "b_dec too small for the test to tell the two apart"
    _assert_codes_match(sae, x, expected)


# --------------------------------------------------------------------------------------------- SAELens


def test_saelens_standard_encode(tmp_path):
    folder = tmp_path / "standard"
    t = _write_saelens(folder, {"architecture": "standard", "apply_b_dec_to_input": True})
    sae = load_sae(folder)
    assert detect_format(folder) == "saelens"
    assert sae.cfg.architecture == "relu"
    assert sae.cfg.hookpoint == "blocks.3.hook_resid_post"

    x = _inputs()
    expected = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    assert 0 < int((expected > 0).sum()) < expected.numel()
    _assert_codes_match(sae, x, expected)


def test_saelens_topk_encode(tmp_path):
    folder = tmp_path / "topk"
    t = _write_saelens(folder, {"architecture": "topk", "k": 5, "apply_b_dec_to_input": True})
    sae = load_sae(folder)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 5

    x = _inputs()
    expected = _topk_dense((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"], 5)
    assert int((expected > 0).sum()) == N_TOKENS * 5
    _assert_codes_match(sae, x, expected)


def test_saelens_jumprelu_threshold_zeroes_positive_preactivations(tmp_path):
    folder = tmp_path / "jumprelu"
    g = _gen(7)
    threshold = torch.rand(NUM_LATENTS, generator=g) * 0.2
    threshold[::3] = 3.0  # large thresholds: these latents fire only on big pre-activations
    t = _write_saelens(folder, {"architecture": "jumprelu", "apply_b_dec_to_input": True}, threshold=threshold)
    sae = load_sae(folder)
    assert sae.cfg.architecture == "jumprelu"

    x = _inputs()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    expected = torch.relu(pre) * (pre > threshold)
    # The threshold must zero some positive pre-activations, and leave some alive.
    assert bool(((pre > 0) & (pre <= threshold)).any())
    assert int((expected > 0).sum()) < int((pre > 0).sum())
    assert int((expected > 0).sum()) > 0
    _assert_codes_match(sae, x, expected)


def test_saelens_log_threshold_is_exponentiated(tmp_path):
    folder = tmp_path / "jumprelu-log"
    threshold = torch.full((NUM_LATENTS,), 0.5)
    threshold[::2] = 4.0
    g = _gen(3)
    tensors = {
        "W_enc": torch.randn(D_IN, NUM_LATENTS, generator=g),
        "b_enc": torch.zeros(NUM_LATENTS),
        "W_dec": torch.randn(NUM_LATENTS, D_IN, generator=g),
        "b_dec": torch.zeros(D_IN),
        "log_threshold": threshold.log(),
    }
    folder.mkdir()
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"architecture": "jumprelu"}))
    sae = load_sae(folder)
    x = _inputs()
    pre = x @ tensors["W_enc"]
    torch.testing.assert_close(sae.encode_dense(x), torch.relu(pre) * (pre > threshold))


def test_saelens_apply_b_dec_to_input_false(tmp_path):
    folder = tmp_path / "no-b-dec"
    t = _write_saelens(folder, {"architecture": "standard", "apply_b_dec_to_input": False})
    sae = load_sae(folder)
    assert sae.cfg.apply_b_dec_to_input is False

    x = _inputs()
    expected = torch.relu(x @ t["W_enc"] + t["b_enc"])
    with_b_dec = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    assert not torch.allclose(expected, with_b_dec)
    _assert_codes_match(sae, x, expected)


def test_saelens_old_style_topk_config(tmp_path):
    folder = tmp_path / "old"
    t = _write_saelens(
        folder,
        {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}, "apply_b_dec_to_input": True,
         "hook_name": "blocks.2.hook_resid_pre"},
    )
    sae = load_sae(folder)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4
    assert sae.cfg.hookpoint == "blocks.2.hook_resid_pre"

    x = _inputs()
    expected = _topk_dense((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"], 4)
    assert int((expected > 0).sum()) == N_TOKENS * 4
    _assert_codes_match(sae, x, expected)


def test_saelens_unsupported_architecture_names_it(tmp_path):
    folder = tmp_path / "gated"
    _write_saelens(folder, {"architecture": "gated"})
    with pytest.raises(ValueError, match="gated"):
        load_sae(folder)


# --------------------------------------------------------------------------------------------- detection


def test_detect_format_by_contents_not_path_words(tmp_path):
    folder = tmp_path / "saelens_stuff"
    _write_sparsify(folder)
    assert detect_format(folder) == "sparsify"
    assert load_sae(folder).cfg.source_format == "sparsify"

    other = tmp_path / "sparsify_like_name"
    _write_saelens(other, {"architecture": "standard"})
    assert detect_format(other) == "saelens"


def test_unrecognised_folder_lists_found_files_and_needs(tmp_path):
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00" * 8)
    with pytest.raises(SaeFormatError) as info:
        load_sae(folder)
    message = str(info.value)
    assert "weights.bin" in message
    assert "sae.safetensors" in message
    assert "sae_weights.safetensors" in message
    assert "cfg.json" in message
    # SaeFormatError is a ValueError, so callers catching ValueError see it too.
    assert isinstance(info.value, ValueError)


def test_missing_folder_names_the_path(tmp_path):
    folder = tmp_path / "does" / "not" / "exist"
    with pytest.raises(SaeFormatError) as info:
        load_sae(folder)
    assert str(folder) in str(info.value)


def test_sparsify_cfg_without_weights_mentions_sae_safetensors(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"k": K, "num_latents": NUM_LATENTS, "expansion_factor": 4}))
    with pytest.raises(SaeFormatError) as info:
        detect_format(folder)
    message = str(info.value)
    assert "sae.safetensors" in message
    assert "cfg.json" in message


def test_sparsify_file_missing_tensors_is_reported(tmp_path):
    folder = tmp_path / "bad-tensors"
    folder.mkdir()
    save_file({"encoder.weight": torch.zeros(NUM_LATENTS, D_IN)}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"k": K}))
    with pytest.raises(ValueError) as info:
        load_sae(folder)
    assert "W_dec" in str(info.value) and "b_dec" in str(info.value)


# --------------------------------------------------------------------------------------------- save / reload


def test_save_topk_uses_sparsify_layout_and_round_trips(tmp_path):
    sae = _random_sae("topk", k=K)
    folder = tmp_path / "saved-topk"
    assert save_sae(sae, folder) == "sparsify"
    assert (folder / "cfg.json").is_file()
    assert (folder / "sae.safetensors").is_file()
    assert not (folder / "sae_weights.safetensors").exists()
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["k"] == K and cfg["num_latents"] == NUM_LATENTS and cfg["transcode"] is False
    assert detect_format(folder) == "sparsify"

    loaded = load_sae(folder)
    assert loaded.cfg.architecture == "topk" and loaded.cfg.k == K
    x = _inputs(seed=5)
    original, again = sae.encode(x), loaded.encode(x)
    assert original.values.numel() > 0
    torch.testing.assert_close(_dense_from_codes(again, x.shape[0]), _dense_from_codes(original, x.shape[0]))
    torch.testing.assert_close(loaded.reconstruct(x), sae.reconstruct(x))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(loaded, name), getattr(sae, name))


def test_save_jumprelu_round_trips_through_saelens_layout(tmp_path):
    sae = _random_sae("jumprelu", seed=2)
    folder = tmp_path / "saved-jumprelu"
    assert save_sae(sae, folder) == "saelens"
    assert (folder / "cfg.json").is_file()
    assert (folder / "sae_weights.safetensors").is_file()
    assert not (folder / "sae.safetensors").exists()
    assert detect_format(folder) == "saelens"

    loaded = load_sae(folder)
    assert loaded.cfg.architecture == "jumprelu"
    assert loaded.cfg.hookpoint == "layers.3"
    torch.testing.assert_close(loaded.threshold, sae.threshold)
    x = _inputs(seed=6)
    expected = sae.encode_dense(x)
    # Some latents fire and the threshold cuts some positive pre-activations.
    pre = sae.pre_activations(x)
    assert int((expected > 0).sum()) > 0
    assert bool(((pre > 0) & (expected == 0)).any())
    torch.testing.assert_close(loaded.encode_dense(x), expected)
    torch.testing.assert_close(_dense_from_codes(loaded.encode(x), x.shape[0]), expected)


def test_save_relu_round_trips_as_standard(tmp_path):
    sae = _random_sae("relu", seed=4)
    folder = tmp_path / "saved-relu"
    assert save_sae(sae, folder) == "saelens"
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "standard"
    loaded = load_sae(folder)
    assert loaded.cfg.architecture == "relu"
    x = _inputs(seed=8)
    torch.testing.assert_close(loaded.encode_dense(x), sae.encode_dense(x))


# --------------------------------------------------------------------------------------------- reconstruct


def test_topk_reconstruct_equals_dense_decode():
    sae = _random_sae("topk", k=K, seed=9)
    x = _inputs(seed=10)
    dense = sae.encode_dense(x)
    assert int((dense > 0).sum(dim=1).max()) <= K
    expected = dense @ sae.W_dec + sae.b_dec
    with torch.no_grad():
        torch.testing.assert_close(sae.reconstruct(x), expected)


def test_jumprelu_reconstruct_equals_dense_decode():
    sae = _random_sae("jumprelu", seed=11)
    x = _inputs(seed=12)
    with torch.no_grad():
        torch.testing.assert_close(sae.reconstruct(x), sae.encode_dense(x) @ sae.W_dec + sae.b_dec)


def test_sae_rejects_wrong_shapes_and_missing_k():
    with pytest.raises(ValueError, match="k"):
        SaeConfig(architecture="topk", d_in=D_IN, num_latents=NUM_LATENTS)
    with pytest.raises(ValueError, match="W_enc"):
        Sae(
            SaeConfig(architecture="relu", d_in=D_IN, num_latents=NUM_LATENTS),
            W_enc=torch.zeros(NUM_LATENTS, D_IN),  # transposed by mistake
            b_enc=torch.zeros(NUM_LATENTS),
            W_dec=torch.zeros(NUM_LATENTS, D_IN),
            b_dec=torch.zeros(D_IN),
        )


def test_gemmascope_npz_encodes_as_jumprelu_without_b_dec_subtraction(tmp_path):
    d, n = 16, 64
    rng = np.random.default_rng(3)
    params = {
        "W_enc": rng.normal(size=(d, n)).astype(np.float32),
        "W_dec": rng.normal(size=(n, d)).astype(np.float32),
        "b_enc": rng.normal(size=n).astype(np.float32),
        "b_dec": rng.normal(size=d).astype(np.float32) * 3,
        "threshold": np.where(np.arange(n) % 2 == 0, 0.5, 2.5).astype(np.float32),
    }
    folder = tmp_path / "layer_6" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    assert detect_format(folder) == "gemmascope"
    sae = load_sae(folder)
    x = torch.from_numpy(rng.normal(size=(32, d)).astype(np.float32))
    pre = x @ torch.from_numpy(params["W_enc"]) + torch.from_numpy(params["b_enc"])
    expected = (pre > torch.from_numpy(params["threshold"])) * torch.relu(pre)
    assert ((pre > 0) & (expected == 0)).any()  # the threshold does cut positive pre-activations
    torch.testing.assert_close(sae.encode_dense(x), expected)
    codes = sae.encode(x)
    dense = torch.zeros_like(expected)
    dense[codes.rows, codes.latents] = codes.values
    torch.testing.assert_close(dense, expected)

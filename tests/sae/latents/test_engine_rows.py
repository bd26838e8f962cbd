"""The rows the caching engine writes are the SAE's codes exactly: same non-zeros, float16 values saturated,
each file sorted by (latent, ctx_id, pos), however the batches reach the host and however many writers run.

The model is a tiny Llama with random weights (seconds on CPU); the reference is computed here without the
engine, from the same truncated forward and `Sae.encode`.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from sae.lake import Lake
from sae.latents.engine import ActivationSink, LatentSink, run_cache
from sae.latents.hookpoints import capture
from sae.saes.codecs import Sae, SaeConfig

HOOKPOINT = "layers.1"
CTX_LEN, BATCH, CHUNK_CONTEXTS, N_CONTEXTS = 16, 4, 8, 28  # 4 chunks, the last one short
D, N_LATENTS = 32, 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=D, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX_LEN)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 128, (N_CONTEXTS, CTX_LEN))


def random_sae(architecture: str, scale: float = 1.0) -> Sae:
    generator = torch.Generator().manual_seed(1)
    W_dec = torch.randn(N_LATENTS, D, generator=generator)
    cfg = SaeConfig(architecture, D, N_LATENTS, k=8 if architecture == "topk" else None, hookpoint=HOOKPOINT)
    # A negative encoder bias leaves some of the top k at zero after the ReLU: those must not be rows.
    b_enc = torch.full((N_LATENTS,), -0.5 * scale)
    return Sae(cfg, scale * W_dec.T, b_enc, W_dec, torch.zeros(D))


def expected_rows(model, tokens, sae: Sae) -> pa.Table:
    """The old engine's rows: Sae.encode's non-zeros, values through to_float16, sorted by the full key."""
    parts = []
    limit = torch.finfo(torch.float16).max
    with capture(model, [HOOKPOINT]) as forward, torch.no_grad():
        for b0 in range(0, len(tokens), BATCH):
            acts = forward(torch.tensor(tokens[b0 : b0 + BATCH]))[HOOKPOINT]
            codes = sae.encode(acts.reshape(-1, D))
            rows = codes.rows.numpy()
            parts.append(pa.table({
                "latent": codes.latents.numpy().astype(np.int32),
                "ctx_id": (b0 + rows // CTX_LEN).astype(np.int32),
                "pos": (rows % CTX_LEN).astype(np.int16),
                "act": codes.values.clamp(-limit, limit).to(torch.float16).numpy(),
            }))
    return sorted_by_key(pa.concat_tables(parts))


def sorted_by_key(table: pa.Table) -> pa.Table:
    return table.sort_by([("latent", "ascending"), ("ctx_id", "ascending"), ("pos", "ascending")])


@pytest.mark.parametrize("architecture,scale", [("topk", 1.0), ("topk", 1e6), ("relu", 1.0)])
def test_latent_rows_are_the_codes_of_the_sae(tmp_path, model, tokens, architecture, scale):
    sae = random_sae(architecture, scale)
    lake = Lake(tmp_path)
    sink = LatentSink(lake, HOOKPOINT, None, "sae", sae)
    report = run_cache(model, tokens, [sink], BATCH, CHUNK_CONTEXTS, progress=False)
    assert report.chunks_computed == 4

    files = lake.files("latents", HOOKPOINT, "sae")
    assert len(files) == 4
    tables = [pq.read_table(f).select(["latent", "ctx_id", "pos", "act"]) for f in files]
    for table in tables:  # each file sorted by (latent, ctx_id, pos) as it is stored, not only as a set
        assert table.equals(sorted_by_key(table))
    written = pa.concat_tables(tables)
    expected = expected_rows(model, tokens, sae)
    assert written.num_rows == expected.num_rows > 0
    assert sorted_by_key(written).equals(expected)
    if architecture == "topk":  # some top-k codes were zero after the ReLU and were dropped
        assert expected.num_rows < N_CONTEXTS * CTX_LEN * sae.cfg.k
    if scale > 1:  # values beyond float16's range are stored at its largest finite value, never inf
        act = written.column("act").to_numpy()
        assert np.isfinite(act).all() and act.max() == np.finfo(np.float16).max


def test_activation_rows_are_the_activations_in_float16(tmp_path, model, tokens):
    lake = Lake(tmp_path)
    run_cache(model, tokens, [ActivationSink(lake, HOOKPOINT, None)], BATCH, CHUNK_CONTEXTS, progress=False)
    written = pa.concat_tables([pq.read_table(f) for f in lake.files("activations", HOOKPOINT)])
    with capture(model, [HOOKPOINT]) as forward:
        acts = torch.cat([forward(torch.tensor(tokens[b0 : b0 + BATCH]))[HOOKPOINT]
                          for b0 in range(0, len(tokens), BATCH)])
    assert written.column("ctx_id").to_pylist() == np.repeat(np.arange(N_CONTEXTS), CTX_LEN).tolist()
    assert written.column("pos").to_pylist() == np.tile(np.arange(CTX_LEN), N_CONTEXTS).tolist()
    stored = np.stack(written.column("act").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(stored, acts.reshape(-1, D).to(torch.float16).numpy())

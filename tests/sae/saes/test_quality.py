"""Spliced-in fidelity on the real offline model, with SAEs whose answer is known in advance."""

import pytest
import torch

from sae.latents.hookpoints import capture
from sae.saes.codecs import Sae, SaeConfig
from sae.saes.quality import layer_baseline, spliced_loss


@pytest.fixture(scope="module")
def model(converted_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(converted_model).eval()


@pytest.fixture(scope="module")
def tokens():
    generator = torch.Generator().manual_seed(0)
    # Repeated random sequences: the model predicts the second half well, so ablations hurt measurably.
    half = torch.randint(100, 5000, (4, 32), generator=generator)
    return torch.cat([half, half], dim=1).numpy()


def exact_sae(d: int) -> Sae:
    """A ReLU SAE with latents +x and -x: relu(x) - relu(-x) = x, a perfect reconstruction."""
    eye = torch.eye(d)
    return Sae(SaeConfig("relu", d, 2 * d, apply_b_dec_to_input=False),
               W_enc=torch.cat([eye, -eye], dim=1), b_enc=torch.zeros(2 * d),
               W_dec=torch.cat([eye, -eye], dim=0), b_dec=torch.zeros(d))


def test_a_perfect_reconstruction_costs_nothing_and_the_mean_costs_something(model, tokens):
    baseline = layer_baseline(model, tokens, "layers.4", batch_size=2)
    assert baseline.ce_mean_ablated > baseline.ce_clean + 0.1
    loss = spliced_loss(model, tokens, baseline, exact_sae(model.config.hidden_size), batch_size=2)
    assert loss.ce_increase == pytest.approx(0, abs=1e-3)
    assert loss.ce_recovered == pytest.approx(1, abs=1e-3)


def test_a_transcoder_reads_the_mlp_input_and_beats_the_zero_baseline(model, tokens):
    """A sparsify-style transcoder whose skip connection is the least-squares map from MLP input to output."""
    ids = torch.tensor(tokens, dtype=torch.long)
    with capture(model, ["layers.2.mlp.in", "layers.2.mlp"]) as forward:
        out = forward(ids)
    x = out["layers.2.mlp.in"].reshape(-1, model.config.hidden_size)
    y = out["layers.2.mlp"].reshape(-1, model.config.hidden_size)
    W_skip = torch.linalg.lstsq(x, y).solution.T
    d, n = model.config.hidden_size, 64
    transcoder = Sae(SaeConfig("topk", d, n, k=4, apply_b_dec_to_input=False, transcode=True),
                     W_enc=torch.zeros(d, n), b_enc=torch.zeros(n), W_dec=torch.zeros(n, d), b_dec=torch.zeros(d),
                     W_skip=W_skip)
    with torch.no_grad():
        error = (transcoder.reconstruct(x) - y).pow(2).sum()
    assert error < 0.5 * y.pow(2).sum()  # better than predicting zero
    baseline = layer_baseline(model, tokens, "layers.2.mlp", batch_size=2)
    loss = spliced_loss(model, tokens, baseline, transcoder, batch_size=2)
    assert loss.ce_spliced < baseline.ce_mean_ablated

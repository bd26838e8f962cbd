"""`latent_logits` on the real SmolLM2: the promoted tokens are those the model's own final norm and unembedding
raise when the direction is added to a real residual stream, and a neuron's direction is its column of the
MLP's down projection."""

import pytest
import torch

from sae.config import NeuronsConfig, SaeSpec, TrainConfig
from sae.saes.codecs import Sae, SaeConfig
from sae.saes.logits import SCHEMA, latent_logits, residual_directions
from sae.saes.neurons import neuron_codec


@pytest.fixture(scope="module")
def model(converted_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(converted_model).eval()


def random_sae(d: int, n: int, seed: int) -> Sae:
    g = torch.Generator().manual_seed(seed)
    decoder = torch.randn(n, d, generator=g)
    config = SaeConfig("topk", d, n, k=4)
    return Sae(config, W_enc=decoder.T.clone(), b_enc=torch.zeros(n), W_dec=decoder, b_dec=torch.zeros(d))


def decode(ids):
    return [f"t{i}" for i in ids]


def test_promoted_tokens_are_those_the_model_raises_when_the_direction_is_added(model):
    d = model.config.hidden_size
    sae = random_sae(d, 3, seed=0)
    table = latent_logits(model, sae, "layers.3", k=10, decode=decode)
    assert table.schema == SCHEMA and table.column("latent").to_pylist() == [0, 1, 2]
    # A real residual stream (after block 3, last token), read out by the model's own final norm and unembedding.
    ids = torch.tensor([[504, 3458, 314, 260, 1345]])
    with torch.no_grad():
        stream = model.model(ids, output_hidden_states=True).hidden_states[4][0, -1]

        def readout(v):
            return model.lm_head(model.model.norm(v))

        for row in table.to_pylist():
            direction = sae.W_dec[row["latent"]]
            # A step orthogonal to the stream leaves the norm's rms unchanged to first order: take the stream's
            # component orthogonal to the direction.
            base = stream - (direction @ stream) / (direction @ direction) * direction
            step = 1e-2 * base.norm() / direction.norm()
            delta = readout(base + step * direction) - readout(base)
            for side, sign in (("top", 1), ("bottom", -1)):
                # The same strongest token; the rest of our k among the model's 2k (random directions give
                # near ties).
                model_order = torch.topk(sign * delta, 20).indices.tolist()
                assert row[f"{side}_ids"][0] == model_order[0] and set(row[f"{side}_ids"]) <= set(model_order)
                # Proportional to the model's change, by one factor: the step over the stream's rms.
                ratio = delta[row[f"{side}_ids"]] / torch.tensor(row[f"{side}_values"])
                torch.testing.assert_close(ratio, torch.full_like(ratio, step / base.pow(2).mean().sqrt()),
                                           rtol=0.02, atol=0)
            assert row["top_values"] == sorted(row["top_values"], reverse=True) and row["top_values"][0] > 0
            assert row["bottom_values"] == sorted(row["bottom_values"]) and row["bottom_values"][0] < 0
            assert row["top_tokens"] == decode(row["top_ids"])


def test_a_neurons_direction_is_its_column_of_the_down_projection(model):
    width = model.config.intermediate_size
    directions = residual_directions(model, neuron_codec(width, None), "layers.1.mlp.hidden")
    down = model.model.layers[1].mlp.down_proj.weight
    assert directions.shape == (width, model.config.hidden_size)
    torch.testing.assert_close(directions[[0, 7, width - 1]], down[:, [0, 7, width - 1]].T)


def test_every_kind_of_variant_but_one_defined_without_a_decoder_has_a_decoder():
    assert SaeSpec("x", train=TrainConfig()).has_decoder and SaeSpec("n", neurons=NeuronsConfig()).has_decoder
    assert SaeSpec("p", path="/saes").has_decoder and SaeSpec("h", hub="org/saes").has_decoder
    assert not SaeSpec("defined-on-the-corpus").has_decoder

"""Hookpoints on the real offline model: names, the truncated forward, and its agreement with transformers."""

import pytest
import torch

from sae.latents.hookpoints import HookpointError, capture, decoder_layers, resolve_hookpoint


@pytest.fixture(scope="module")
def model(converted_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(converted_model).eval()


def test_unknown_hookpoint_lists_the_valid_names(model):
    with pytest.raises(HookpointError) as err:
        resolve_hookpoint(model, "blocks.4.resid")
    message = str(err.value)
    assert "blocks.4.resid" in message and "layers.0 ... layers.29" in message and "layers.29.mlp" in message
    assert "layers.i.mlp.hidden" in message
    with pytest.raises(HookpointError, match="layers.30"):
        resolve_hookpoint(model, "layers.30")


def test_capture_matches_hidden_states_and_stops_after_the_deepest_layer(model):
    tokens = torch.randint(0, 1000, (2, 16))
    calls = []
    handle = decoder_layers(model)[5].register_forward_hook(lambda *args: calls.append(1))
    try:
        with capture(model, ["layers.2", "layers.4", "layers.4.mlp"]) as forward:
            out = forward(tokens)
    finally:
        handle.remove()
    assert calls == []  # block 5 never ran
    with torch.no_grad():
        hidden = model(input_ids=tokens, output_hidden_states=True).hidden_states
    torch.testing.assert_close(out["layers.2"], hidden[3])
    torch.testing.assert_close(out["layers.4"], hidden[5])
    assert out["layers.4.mlp"].shape == hidden[5].shape
    assert not torch.allclose(out["layers.4.mlp"], hidden[5])


def test_mlp_input_and_hidden_hookpoints_are_what_the_mlp_computes(model):
    tokens = torch.randint(0, 1000, (2, 16))
    with capture(model, ["layers.2.mlp.in", "layers.2.mlp.hidden", "layers.2.mlp"]) as forward:
        out = forward(tokens)
    mlp = decoder_layers(model)[2].mlp
    with torch.no_grad():
        hidden = mlp.act_fn(mlp.gate_proj(out["layers.2.mlp.in"])) * mlp.up_proj(out["layers.2.mlp.in"])
        torch.testing.assert_close(out["layers.2.mlp.hidden"], hidden)
        torch.testing.assert_close(out["layers.2.mlp"], mlp.down_proj(hidden))
    assert hidden.shape[-1] == model.config.intermediate_size

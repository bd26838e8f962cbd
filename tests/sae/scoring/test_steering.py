"""Steering with the real SmolLM2: the scaled direction is added exactly where the latent writes (checked against
the model's own hidden states and, for a neuron, against adding to the neuron itself), a steered continuation
differs from the clean one, and stored generations are reused, not generated again."""

import pytest
import torch

from sae.latents.hookpoints import decoder_layers, resolve_hookpoint
from sae.scoring.steering import generate, steered_rows, steering, steering_site


@pytest.fixture(scope="module")
def subject(converted_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(converted_model, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(converted_model)


def logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits


def block_inputs(model, ids) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits, and the residual stream each decoder block reads (recorded by hand at its input: the model's
    own `hidden_states` are recorded by hooks of its own, which need not see ours)."""
    seen = []
    handles = [block.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        (kwargs.get("hidden_states", args[0] if args else None)).clone()), with_kwargs=True)
        for block in decoder_layers(model)]
    try:
        return logits(model, ids), seen
    finally:
        for handle in handles:
            handle.remove()


def test_steering_adds_exactly_the_scaled_direction_at_the_hookpoint(subject):
    model, tokenizer = subject
    ids = tokenizer(["The river flows to the sea", "I think that"], return_tensors="pt", padding=True)["input_ids"]
    direction = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=torch.Generator()
                                                          .manual_seed(0)), dim=0)
    vectors = torch.stack([3.0 * direction, -5.0 * direction])  # a vector per batch row
    clean_logits, clean = block_inputs(model, ids)
    with steering(model, "layers.1", vectors):
        steered_logits, steered = block_inputs(model, ids)
    # Block i reads the residual stream after block i - 1: unchanged up to block 1's input, shifted by exactly the
    # vector at every position of block 2's input (the stream after block 1), and the change spreads to the logits.
    assert torch.equal(steered[1], clean[1])
    delta = steered[2] - clean[2]
    torch.testing.assert_close(delta, vectors[:, None, :].expand_as(delta), atol=1e-4, rtol=0)
    assert not torch.allclose(steered_logits, clean_logits, atol=1e-3)
    # After the hook is gone the model is clean again.
    torch.testing.assert_close(logits(model, ids), clean_logits)


def test_a_neuron_is_steered_at_the_mlp_output_along_its_down_projection_column(subject):
    model, tokenizer = subject
    ids = tokenizer(["The river flows to the sea"], return_tensors="pt")["input_ids"]
    neuron, scale = 17, 4.0
    site = steering_site("layers.1", transcode=False, neurons=True)
    assert site == "layers.1.mlp"
    down, _ = resolve_hookpoint(model, "layers.1.mlp.hidden")
    with steering(model, site, scale * down.weight[:, neuron].detach()[None]):
        steered = logits(model, ids)
    # By hand: add `scale` to the neuron's own activation, the down projection's input.
    handle = down.register_forward_pre_hook(
        lambda m, args: (args[0] + scale * torch.nn.functional.one_hot(torch.tensor(neuron), args[0].shape[-1]),))
    try:
        by_hand = logits(model, ids)
    finally:
        handle.remove()
    torch.testing.assert_close(steered, by_hand, atol=1e-4, rtol=1e-4)


def test_a_steered_generation_differs_from_the_clean_one_and_stored_rows_are_reused(subject):
    model, tokenizer = subject
    width = model.config.hidden_size
    directions = torch.nn.functional.normalize(torch.randn(3, width, generator=torch.Generator().manual_seed(1)),
                                               dim=1)
    prompts = ("I think that", "Yesterday,")
    saved = []
    rows = steered_rows(model, tokenizer, directions, {2: 10.0}, "layers.1", prompts, (8.0,), 6, {"test": 1}, {},
                        save=saved.append)
    assert [(r["latent"], r["strength"], r["prompt_index"]) for r in rows] == [
        (None, 0.0, 0), (None, 0.0, 1), (2, 8.0, 0), (2, 8.0, 1)]
    clean, steered = rows[:2], rows[2:]
    # The clean rows are the model's own greedy continuation.
    plain = tokenizer(["I think that"], return_tensors="pt")
    with torch.inference_mode():
        own = model.generate(**plain, max_new_tokens=6, do_sample=False)[0, plain["input_ids"].shape[1]:].tolist()
    assert clean[0]["completion_ids"] == own
    assert all(s["completion_ids"] != c["completion_ids"] for s, c in zip(steered, clean))
    assert steered[0]["typical_act"] == 10.0 and steered[0]["site"] == "layers.1" and len(saved) == 1
    # Asked again with the same settings, nothing is generated: every row comes from the store.
    stored = {row["settings_key"]: row for row in rows}
    again = steered_rows(model, tokenizer, directions, {2: 10.0}, "layers.1", prompts, (8.0,), 6, {"test": 1},
                         stored, save=saved.append)
    assert again == rows and len(saved) == 1
    # Another strength is new: only its two rows are generated.
    more = steered_rows(model, tokenizer, directions, {2: 10.0}, "layers.1", prompts, (8.0, 2.0), 6, {"test": 1},
                        stored, save=saved.append)
    assert len(more) == 6 and len(saved) == 2 and len(saved[-1]) == 6
    # Zero vectors leave generation untouched.
    (zero,) = generate(model, tokenizer, ["I think that"], "layers.1", torch.zeros(1, width), 6)
    assert zero == own


def test_the_scores_step_writes_steered_generations_of_a_neuron_variant_and_reuses_them(tmp_path, converted_model,
                                                                                       monkeypatch):
    """A tiny real lake of MLP neurons (no training): the generations are committed to the lake, steered at the
    MLP output, and a second call with one more strength generates only the new rows."""
    import dataclasses

    import pyarrow.parquet as pq

    from sae.config import load_config
    from sae.corpus.stage import build_contexts
    from sae.lake import lake_for
    from sae.latents.stage import cache_latents, compute_latent_stats
    from sae.saes.stage import build_sae
    from sae.scoring import steering as steering_module
    from sae.scoring.stage import write_steered_generations
    from tests.conftest import write_config

    score = {"intervention_prompts": ["I think that"], "intervention_strengths": [4.0], "intervention_tokens": 4,
             "output_prompts": ["In the news today,"]}
    cfg = load_config(write_config(tmp_path, converted_model, n_tokens=1024, layers=[{"hookpoint": "layers.1"}],
                                   saes=[{"name": "neurons", "neurons": {"k": 8}}], score=score))
    build_contexts(cfg)
    build_sae(cfg, "layers.1", "neurons", progress=False)
    cache_latents(cfg, [("layers.1", "neurons")], progress=False)
    stats = compute_latent_stats(cfg, "layers.1", "neurons").to_pylist()
    latents = [r["latent"] for r in stats if not r["dead"]][:2]
    table = write_steered_generations(cfg, "layers.1", "neurons", latents)
    rows = table.to_pylist()
    # The scorer's prompt, then the output explainer's: each clean once, then steered per latent.
    per_purpose = [(None, 0.0)] + [(latent, 4.0) for latent in latents]
    assert [(r["purpose"], r["latent"], r["strength"]) for r in rows] == [
        (purpose, *pair) for purpose in ("score", "explain") for pair in per_purpose]
    assert [r["prompt"] for r in rows if r["latent"] is None] == ["I think that", "In the news today,"]
    assert {r["site"] for r in rows} == {"layers.1.mlp"} and rows[1]["typical_act"] == stats[latents[0]]["max_act"]
    stored = pq.read_table(lake_for(cfg).files("steered_generations", "layers.1", "neurons")).to_pylist()
    assert [r["settings_key"] for r in stored] == [r["settings_key"] for r in rows]
    generated = []
    original = steering_module.generate
    monkeypatch.setattr(steering_module, "generate", lambda model, tokenizer, prompts, *args: generated.append(
        prompts) or original(model, tokenizer, prompts, *args))
    more = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, intervention_strengths=(4.0, 1.0)))
    again = write_steered_generations(more, "layers.1", "neurons", latents).to_pylist()
    assert len(again) == 2 * (1 + 2 * len(latents))
    assert generated == [["I think that"] * len(latents), ["In the news today,"] * len(latents)]
    assert [r for r in again if r["strength"] == 4.0] == [r for r in rows if r["strength"] == 4.0]

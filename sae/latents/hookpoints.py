"""Hookpoints of Hugging Face decoder models, and a forward pass truncated at the deepest one.

Names (the sparsify convention, extended):
  layers.{i}             the residual stream after decoder block i
  layers.{i}.mlp         the output of block i's MLP
  layers.{i}.mlp.in      the input of block i's MLP (what a transcoder at layers.{i}.mlp reads)
  layers.{i}.mlp.hidden  the MLP's hidden activations, the input of its down projection (the neurons)
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from torch import Tensor, nn

_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "layers")
_HOOKPOINT = re.compile(r"^layers\.(\d+)(\.mlp(\.in|\.hidden)?)?$")
_DOWN_PROJECTIONS = ("down_proj", "c_proj", "dense_4h_to_h", "fc2")


class HookpointError(ValueError):
    """A hookpoint name that the model does not have."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in _LAYER_PATHS:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise HookpointError(f"cannot find the decoder blocks of {type(model).__name__}; looked for {_LAYER_PATHS}")


def resolve_hookpoint(model: nn.Module, name: str) -> tuple[nn.Module, bool]:
    """The module at the hookpoint, and whether the hookpoint is that module's input (else its output)."""
    layers = decoder_layers(model)
    match = _HOOKPOINT.match(name)
    if match is None or int(match.group(1)) >= len(layers):
        last = len(layers) - 1
        raise HookpointError(
            f"unknown hookpoint {name!r} for {type(model).__name__} with {len(layers)} blocks; valid names are "
            f"layers.0 ... layers.{last} (residual stream after block i), layers.0.mlp ... layers.{last}.mlp "
            f"(MLP output), layers.i.mlp.in (MLP input) and layers.i.mlp.hidden (MLP neurons)"
        )
    block = layers[int(match.group(1))]
    if match.group(2) is None:
        return block, False
    if match.group(3) == ".in":
        return block.mlp, True
    if match.group(3) == ".hidden":
        for attr in _DOWN_PROJECTIONS:
            if isinstance(getattr(block.mlp, attr, None), nn.Module):
                return getattr(block.mlp, attr), True
        raise HookpointError(f"cannot find the down projection of {type(block.mlp).__name__}; looked for "
                             f"{_DOWN_PROJECTIONS}")
    return block.mlp, False


def source_hookpoint(hookpoint: str, *, transcode: bool = False, neurons: bool = False) -> str:
    """Where a variant configured at `hookpoint` reads its input: the hookpoint itself; the MLP input for a
    transcoder at layers.i.mlp; the MLP neurons of block i for the neuron baselines."""
    if neurons:
        return f"layers.{block_index(hookpoint)}.mlp.hidden"
    if transcode:
        if not hookpoint.endswith(".mlp"):
            raise HookpointError(f"a transcoder reads an MLP's input: configure it at layers.i.mlp, not {hookpoint!r}")
        return f"{hookpoint}.in"
    return hookpoint


def block_index(hookpoint: str) -> int:
    """The decoder block a hookpoint name refers to (no model needed)."""
    match = _HOOKPOINT.match(hookpoint)
    if match is None:
        raise HookpointError(
            f"unknown hookpoint {hookpoint!r}: expected layers.i, layers.i.mlp, layers.i.mlp.in or layers.i.mlp.hidden"
        )
    return int(match.group(1))


def hookpoint_width(model_config, name: str) -> int:
    """Width of the activations at a hookpoint, from the model's config (no weights needed)."""
    if name.endswith(".mlp.hidden"):
        return getattr(model_config, "intermediate_size", None) or 4 * model_config.hidden_size
    return model_config.hidden_size


class _StopForward(Exception):
    pass


@contextmanager
def capture(model: nn.Module, hookpoints: list[str]):
    """Yield a function that runs the model on token ids and returns {hookpoint: activations [b, t, d]}.

    The forward pass stops right after the deepest hookpoint, so no block above it is computed.
    """
    resolved = {name: resolve_hookpoint(model, name) for name in hookpoints}
    captured: dict[str, Tensor] = {}
    handles = []

    def keep(name, value):
        captured[name] = value[0] if isinstance(value, tuple) else value
        if len(captured) == len(resolved):
            raise _StopForward

    for name, (module, is_input) in resolved.items():
        if is_input:
            handles.append(module.register_forward_pre_hook(lambda m, args, name=name: keep(name, args)))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, name=name: keep(name, out)))

    @torch.inference_mode()
    def run(input_ids: Tensor) -> dict[str, Tensor]:
        captured.clear()
        try:
            model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        missing = set(resolved) - set(captured)
        if missing:
            raise RuntimeError(f"hookpoints {sorted(missing)} produced no output")
        return dict(captured)

    try:
        yield run
    finally:
        for handle in handles:
            handle.remove()

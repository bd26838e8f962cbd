"""Hookpoints of Hugging Face decoder models, and a forward pass truncated at the deepest one.

Names (the sparsify convention):
  layers.{i}      the residual stream after decoder block i
  layers.{i}.mlp  the output of block i's MLP
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from torch import Tensor, nn

_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "layers")
_HOOKPOINT = re.compile(r"^layers\.(\d+)(\.mlp)?$")


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


def valid_hookpoints(model: nn.Module) -> list[str]:
    n = len(decoder_layers(model))
    return [f"layers.{i}" for i in range(n)] + [f"layers.{i}.mlp" for i in range(n)]


def resolve_hookpoint(model: nn.Module, name: str) -> tuple[nn.Module, int]:
    """The module whose output is the hookpoint, and its block index."""
    layers = decoder_layers(model)
    match = _HOOKPOINT.match(name)
    if match is None or int(match.group(1)) >= len(layers):
        raise HookpointError(
            f"unknown hookpoint {name!r} for {type(model).__name__} with {len(layers)} blocks; valid names are "
            f"layers.0 ... layers.{len(layers) - 1} (residual stream after block i) and "
            f"layers.0.mlp ... layers.{len(layers) - 1}.mlp (MLP output)"
        )
    block = layers[int(match.group(1))]
    return (block.mlp if match.group(2) else block), int(match.group(1))


def hidden_size(model: nn.Module) -> int:
    return model.config.hidden_size


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

    def make_hook(name):
        def hook(module, args, output):
            captured[name] = output[0] if isinstance(output, tuple) else output
            if len(captured) == len(resolved):
                raise _StopForward

        return hook

    for name, (module, _) in resolved.items():
        handles.append(module.register_forward_hook(make_hook(name)))

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

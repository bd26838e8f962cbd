"""The one in-memory SAE form that every on-disk format is converted into.

Shapes: W_enc [d_in, L], b_enc [L], W_dec [L, d_in], b_dec [d_in], threshold [L] (JumpReLU only).
`encode` returns sparse codes straight from the encoder (top-k indices and values for TopK), never a
dense [tokens x latents] buffer followed by `nonzero` where that can be avoided.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCHITECTURES = ("topk", "relu", "jumprelu")


@dataclass
class SaeConfig:
    architecture: str  # topk | relu | jumprelu
    d_in: int
    num_latents: int
    k: int | None = None  # TopK only
    # Subtract b_dec from the input before encoding (sparsify SAEs and most SAELens SAEs do; Gemma Scope
    # and transcoders do not).
    apply_b_dec_to_input: bool = True
    transcode: bool = False  # reads the MLP input and reconstructs the MLP output
    hookpoint: str | None = None
    source_format: str = "saelake"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.architecture!r}; expected one of {ARCHITECTURES}")
        if self.architecture == "topk" and not self.k:
            raise ValueError("a TopK SAE needs k")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SparseCodes:
    """Non-zero latent activations of a batch of tokens, in coordinate form."""

    rows: Tensor  # int64 [nnz], token index inside the batch
    latents: Tensor  # int64 [nnz]
    values: Tensor  # float [nnz], all > 0


class Sae(nn.Module):
    def __init__(
        self,
        cfg: SaeConfig,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        threshold: Tensor | None = None,
        W_skip: Tensor | None = None,
    ):
        super().__init__()
        d, n = cfg.d_in, cfg.num_latents
        _expect_shape("W_enc", W_enc, (d, n))
        _expect_shape("b_enc", b_enc, (n,))
        _expect_shape("W_dec", W_dec, (n, d))
        _expect_shape("b_dec", b_dec, (d,))
        if cfg.architecture == "jumprelu":
            if threshold is None:
                raise ValueError("a JumpReLU SAE needs a threshold tensor")
            _expect_shape("threshold", threshold, (n,))
        self.cfg = cfg
        # Own copies: SAEs built from the same tensors (e.g. one data mean as b_dec) must not share storage.
        self.W_enc = nn.Parameter(_own(W_enc))
        self.b_enc = nn.Parameter(_own(b_enc))
        self.W_dec = nn.Parameter(_own(W_dec))
        self.b_dec = nn.Parameter(_own(b_dec))
        self.threshold = nn.Parameter(_own(threshold), requires_grad=False) if threshold is not None else None
        self.W_skip = nn.Parameter(_own(W_skip), requires_grad=False) if W_skip is not None else None

    @property
    def num_latents(self) -> int:
        return self.cfg.num_latents

    def pre_activations(self, x: Tensor) -> Tensor:
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode_topk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """TopK only: (values [n, k], indices [n, k]) with values >= 0 (ReLU before the top-k)."""
        values, indices = torch.topk(self.pre_activations(x), self.cfg.k, dim=-1, sorted=False)
        return F.relu(values), indices

    def encode_dense(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if self.cfg.architecture == "topk":
            values, indices = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, F.relu(values))
        acts = F.relu(pre)
        if self.cfg.architecture == "jumprelu":
            acts = acts * (pre > self.threshold)
        return acts

    def encode(self, x: Tensor) -> SparseCodes:
        if self.cfg.architecture == "topk":
            values, indices = self.encode_topk(x)
            rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(self.cfg.k)
            values, indices = values.reshape(-1), indices.reshape(-1)
            keep = values > 0
            return SparseCodes(rows[keep], indices[keep], values[keep])
        # ReLU / JumpReLU codes have no fixed width: the dense pre-activations are inherent here.
        acts = self.encode_dense(x)
        rows, latents = acts.nonzero(as_tuple=True)
        return SparseCodes(rows, latents, acts[rows, latents])

    def decode_topk(self, values: Tensor, indices: Tensor) -> Tensor:
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec

    def reconstruct(self, x: Tensor) -> Tensor:
        """The SAE's estimate of its target (the input, or the MLP output for a transcoder)."""
        if self.cfg.architecture == "topk":
            out = self.decode_topk(*self.encode_topk(x))
        else:
            out = self.encode_dense(x) @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            out = out + x.to(out.dtype) @ self.W_skip.T
        return out

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


def _own(tensor: Tensor) -> Tensor:
    return tensor.detach().to(torch.float32, copy=True).contiguous()


def _expect_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"SAE tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")

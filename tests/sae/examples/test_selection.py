"""Example selection in DuckDB against a brute-force Python reference on a small synthetic lake."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sae.config import ExamplesConfig
from sae.examples.neighbours import nearest_latents
from sae.examples.selection import coverage, select_examples

N_CONTEXTS, CTX_LEN, N_LATENTS = 300, 64, 40
CFG = ExamplesConfig(window=16, peak_position=0.5, n_top=5, n_quantiles=4, n_train_quantile=4, n_test=8,
                     n_random=6, n_neighbour=4, neighbour_latents=3)
DECODER = torch.randn(N_LATENTS, 8, generator=torch.Generator().manual_seed(0))
NEIGHBOURS = nearest_latents(DECODER, CFG.neighbour_latents)


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory):
    """Latents with power-law firing rates (latent 0 fires almost everywhere, the last ones rarely)."""
    root = tmp_path_factory.mktemp("examples-lake")
    rng = np.random.default_rng(0)
    rows = []
    for latent in range(N_LATENTS - 1):  # the last latent never fires
        rate = 0.3 / (1 + latent) ** 2 if latent else 0.9
        fires = np.argwhere(rng.random((N_CONTEXTS, CTX_LEN)) < rate)
        acts = rng.gamma(2.0, 1.0 + latent % 3, len(fires)).astype(np.float16) + np.float16(0.01)
        rows.append(np.column_stack([np.full(len(fires), latent), fires, acts.astype(np.float32)]))
    data = np.concatenate(rows)
    files = []
    for part, half in enumerate(np.array_split(data, 2)):  # two files, each sorted by latent
        half = half[np.lexsort((half[:, 2], half[:, 1], half[:, 0]))]
        table = pa.table({"latent": half[:, 0].astype(np.int32), "ctx_id": half[:, 1].astype(np.int32),
                          "pos": half[:, 2].astype(np.int16), "act": half[:, 3].astype(np.float16)})
        path = root / f"part-{part:05d}.parquet"
        pq.write_table(table, path)
        files.append(path)
    tokens = rng.integers(0, 50_000, (N_CONTEXTS, CTX_LEN)).astype(np.int32)
    contexts = root / "contexts.parquet"
    pq.write_table(pa.table({"ctx_id": np.arange(N_CONTEXTS, dtype=np.int32),
                             "tokens": pa.array(tokens.tolist(), type=pa.list_(pa.int32()))}), contexts)
    dense = np.zeros((N_LATENTS, N_CONTEXTS, CTX_LEN), dtype=np.float32)
    dense[data[:, 0].astype(int), data[:, 1].astype(int), data[:, 2].astype(int)] = data[:, 3].astype(np.float16)
    return files, contexts, dense, tokens


@pytest.fixture(scope="module")
def examples(small_lake):
    files, contexts, _, _ = small_lake
    return select_examples(files, contexts, "sae-a", CFG, seed=1, neighbours=NEIGHBOURS).to_pylist()


def test_windows_carry_the_right_tokens_and_activations(small_lake, examples):
    _, _, dense, tokens = small_lake
    for ex in examples:
        s = ex["start"]
        assert 0 <= s <= CTX_LEN - CFG.window  # never crosses the context boundary
        assert ex["tokens"] == tokens[ex["ctx_id"], s : s + CFG.window].tolist()
        np.testing.assert_allclose(ex["acts"], dense[ex["latent"], ex["ctx_id"], s : s + CFG.window], rtol=1e-3)
        if ex["kind"] != "random":
            assert max(ex["acts"]) == pytest.approx(ex["peak_act"], rel=1e-3)


def _train_cap(n_contexts: int) -> int:
    """Train windows a latent firing in `n_contexts` contexts gets: all it asks for, or its share when scarce."""
    if n_contexts >= CFG.n_train + CFG.n_test:
        return CFG.n_train
    return max(1, min(n_contexts - 1, math.ceil(n_contexts * CFG.n_train / (CFG.n_train + CFG.n_test))))


def test_top_windows_are_the_true_top(small_lake, examples):
    _, _, dense, _ = small_lake
    for latent in range(N_LATENTS):
        peaks = dense[latent].max(axis=1)
        n_contexts = int((peaks > 0).sum())
        truth = sorted(peaks[peaks > 0], reverse=True)[: min(CFG.n_top, _train_cap(n_contexts))]
        got = sorted((ex["peak_act"] for ex in examples if ex["latent"] == latent and ex["kind"] == "top"),
                     reverse=True)
        np.testing.assert_allclose(got, truth, rtol=1e-3)


def test_quantile_windows_fall_inside_their_bins(small_lake, examples):
    _, _, dense, _ = small_lake
    for latent in range(N_LATENTS - 1):
        nonzero = dense[latent][dense[latent] > 0]
        lo, hi = nonzero.min(), nonzero.max()
        width = (hi - lo) / CFG.n_quantiles
        for ex in (e for e in examples if e["latent"] == latent and e["kind"] == "quantile"):
            assert lo + ex["bin"] * width - 1e-3 <= ex["peak_act"] <= lo + (ex["bin"] + 1) * width + 1e-3


def test_random_and_neighbour_windows_are_silent_and_train_and_test_are_disjoint(small_lake, examples):
    _, _, dense, _ = small_lake
    neighbours = nearest_latents(DECODER, CFG.neighbour_latents).to_pylist()
    for latent in range(N_LATENTS):
        mine = [e for e in examples if e["latent"] == latent]
        near = [n["neighbour"] for n in neighbours if n["latent"] == latent]
        for ex in (e for e in mine if e["kind"] in ("random", "neighbour")):
            window = slice(ex["start"], ex["start"] + CFG.window)
            assert ex["split"] == "test"
            assert not dense[latent, ex["ctx_id"], window].any()
            if ex["kind"] == "neighbour":  # a near latent does fire there
                assert dense[near, ex["ctx_id"], window].any()
        train = {(e["ctx_id"], e["start"]) for e in mine if e["split"] == "train"}
        test = {(e["ctx_id"], e["start"]) for e in mine if e["split"] == "test"}
        assert not train & test
        train_contexts = {e["ctx_id"] for e in mine if e["split"] == "train"}
        assert not train_contexts & {e["ctx_id"] for e in mine if e["kind"] == "quantile" and e["split"] == "test"}
    assert sum(e["kind"] == "neighbour" for e in examples) >= N_LATENTS * CFG.n_neighbour // 2


def test_sizes_and_flags_for_latents_that_fire_rarely(examples):
    table = coverage(pa.Table.from_pylist(examples), CFG).to_pylist()
    assert len(table) == N_LATENTS - 1  # every latent that fires is kept; the dead one has no examples
    frequent = table[3]
    assert (frequent["n_train"], frequent["n_test_activating"], frequent["n_test_random"]) == (
        CFG.n_train, CFG.n_test, CFG.n_random) and frequent["complete"]
    rare = [row for row in table if not row["complete"]]
    assert rare and all(row["reason"] for row in rare)
    assert any("fires in too few contexts" in row["reason"] for row in rare)
    assert not table[0]["complete"] and "fires almost everywhere" in table[0]["reason"]


def test_latents_in_few_contexts_split_them_between_train_and_test(small_lake, examples):
    """A rare latent must not spend every context on the explainer and leave the scorers none to test on."""
    _, _, dense, _ = small_lake
    scarce = 0
    for latent in range(N_LATENTS - 1):
        n_contexts = int((dense[latent].max(axis=1) > 0).sum())
        mine = [e for e in examples if e["latent"] == latent and e["kind"] in ("top", "quantile")]
        n_train = sum(e["split"] == "train" for e in mine)
        n_test = sum(e["split"] == "test" for e in mine)
        assert n_train == _train_cap(n_contexts)
        assert n_test == min(CFG.n_test, n_contexts - n_train)
        if 2 <= n_contexts < CFG.n_train + CFG.n_test:
            scarce += 1
            assert n_train >= 1 and n_test >= 1, (latent, n_contexts)
    assert scarce >= 3  # the lake does hold latents this rare


def test_same_seed_same_examples_other_seed_other_examples(small_lake, examples):
    files, contexts, _, _ = small_lake
    again = select_examples(files, contexts, "sae-a", CFG, seed=1, neighbours=NEIGHBOURS).to_pylist()
    assert again == examples
    other = select_examples(files, contexts, "sae-a", CFG, seed=2, neighbours=NEIGHBOURS).to_pylist()
    assert other != examples
    top = [e for e in examples if e["kind"] == "top"]
    assert top == [e for e in other if e["kind"] == "top"]  # the top does not depend on the seed


def test_blockwise_neighbours_equal_the_dense_top_m():
    W = torch.randn(300, 16, generator=torch.Generator().manual_seed(4))
    table = nearest_latents(W, m=4, block=64).to_pylist()
    unit = torch.nn.functional.normalize(W, dim=1)
    dense = unit @ unit.T
    dense.fill_diagonal_(-torch.inf)
    expected = dense.topk(4, dim=1)
    for row in table:
        assert row["neighbour"] == expected.indices[row["latent"], row["rank"] - 1].item()
        assert row["cosine"] == pytest.approx(expected.values[row["latent"], row["rank"] - 1].item(), abs=1e-5)
    assert len(table) == 300 * 4


def test_silent_train_windows_for_the_contrastive_prompt_are_disjoint_from_test(small_lake):
    files, contexts, dense, _ = small_lake
    cfg = ExamplesConfig(**{**CFG.__dict__, "n_train_random": 3})
    rows = select_examples(files, contexts, "sae-a", cfg, seed=1).to_pylist()
    for latent in (1, 5, 20):
        silent = [r for r in rows if r["latent"] == latent and r["kind"] == "random"]
        train = {(r["ctx_id"], r["start"]) for r in silent if r["split"] == "train"}
        test = {(r["ctx_id"], r["start"]) for r in silent if r["split"] == "test"}
        assert len(train) == 3 and len(test) == CFG.n_random and not train & test
        for ctx_id, start in train:
            assert not dense[latent, ctx_id, start : start + CFG.window].any()
    covered = coverage(pa.Table.from_pylist(rows), cfg).to_pylist()
    assert all(c["n_train_random"] == 3 for c in covered if c["latent"] in (1, 5, 20))


@pytest.mark.parametrize("bounds", [(0, 7, 19, N_LATENTS), (0, 1, 2, 30, N_LATENTS)])
def test_latent_ranges_tile_the_whole_selection(small_lake, examples, bounds):
    """Shards by latent range, concatenated, are the whole partition's rows in the same order: their hard
    negatives come from nearest latents in other ranges too."""
    files, contexts, _, _ = small_lake
    parts = [select_examples(files, contexts, "sae-a", CFG, seed=1, neighbours=NEIGHBOURS, latent_range=(lo, hi))
             for lo, hi in zip(bounds[:-1], bounds[1:])]
    assert all(set(part.column("latent").to_pylist()) <= set(range(lo, hi))
               for part, lo, hi in zip(parts, bounds[:-1], bounds[1:]))
    assert any(e["kind"] == "neighbour" for e in parts[1].to_pylist())
    assert pa.concat_tables(parts).to_pylist() == examples


def test_an_empty_or_reversed_latent_range_is_refused(small_lake):
    files, contexts, _, _ = small_lake
    with pytest.raises(ValueError, match="latent_range"):
        select_examples(files, contexts, "sae-a", CFG, seed=1, latent_range=(5, 5))

"""The TopK trainer and its activation stream, on synthetic sparse data with a known dictionary."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sae.config import TrainConfig
from sae.saes.training import evaluate, holdout_start, iter_activations, train_topk


def write_activations(folder, acts: np.ndarray, ctx_len: int, rows_per_file: int, row_group: int):
    """Activation files in the lake's schema (ctx_id, pos, act[d] float16)."""
    folder.mkdir(parents=True, exist_ok=True)
    n, d = acts.shape
    files = []
    for i, start in enumerate(range(0, n, rows_per_file)):
        part = acts[start : start + rows_per_file]
        rows = np.arange(start, start + len(part))
        table = pa.table({
            "ctx_id": (rows // ctx_len).astype(np.int32),
            "pos": (rows % ctx_len).astype(np.int16),
            "act": pa.FixedSizeListArray.from_arrays(pa.array(part.astype(np.float16).reshape(-1)), d),
        })
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group)
        files.append(path)
    return files


@pytest.mark.parametrize("batch_rows", [64, 100, 256])
def test_stream_yields_every_training_row_once_and_holds_out_the_rest(tmp_path, batch_rows):
    ctx_len, n = 16, 4096
    rows = np.arange(n)
    acts = np.stack([rows % 1024, rows // 1024, np.zeros(n)], axis=1).astype(np.float32)  # exact in fp16
    files = write_activations(tmp_path, acts, ctx_len, rows_per_file=1024, row_group=256)
    cutoff = holdout_start(n // ctx_len, 0.25)
    rng = np.random.default_rng(0)

    def row_ids(batches):
        x = torch.cat(list(batches))
        return (x[:, 0] + 1024 * x[:, 1]).long()

    train = row_ids(iter_activations(files, batch_rows, cutoff, heldout=False, rng=rng))
    held = row_ids(iter_activations(files, batch_rows, cutoff, heldout=True))
    assert sorted(train.tolist()) == list(range(cutoff * ctx_len))
    assert sorted(held.tolist()) == list(range(cutoff * ctx_len, n))
    assert train.tolist() != sorted(train.tolist())  # shuffled


def test_topk_trainer_recovers_a_sparse_dictionary(tmp_path):
    torch.manual_seed(0)
    d, n_atoms, k, n = 32, 64, 4, 40_000
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d), dim=1)
    codes = torch.zeros(n, n_atoms)
    idx = torch.stack([torch.randperm(n_atoms)[:k] for _ in range(n)])
    codes.scatter_(1, idx, torch.rand(n, k) * 4 + 1)
    acts = (codes @ atoms + 0.5).numpy()
    files = write_activations(tmp_path, acts, ctx_len=50, rows_per_file=10_000, row_group=2_000)
    cfg = TrainConfig(expansion_factor=4, k=k, epochs=3, batch_size=256, lr=3e-3, holdout_fraction=0.1)
    (sae,) = train_topk(files, d, [cfg], [7], n_contexts=n // 50, ctx_len=50, seed=0, device=torch.device("cpu"),
                        hookpoint="synthetic", progress=False)
    held = holdout_start(n // 50, 0.1)
    metrics = evaluate(sae, iter_activations(files, 1024, held, heldout=True), torch.device("cpu"))
    assert metrics.fvu < 0.3
    assert metrics.l0 <= k
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.num_latents), atol=1e-4)


def test_saes_trained_together_equal_saes_trained_alone(tmp_path):
    """One pass over the stream for several SAEs changes nothing about any of them."""
    acts = np.random.default_rng(1).normal(size=(4000, 16)).astype(np.float32)
    files = write_activations(tmp_path, acts, ctx_len=40, rows_per_file=2000, row_group=500)
    small = TrainConfig(expansion_factor=2, k=4, epochs=2, batch_size=128)
    large = TrainConfig(expansion_factor=4, k=8, epochs=2, batch_size=128)
    common = {"n_contexts": 100, "ctx_len": 40, "seed": 3, "device": torch.device("cpu"), "progress": False}
    together = train_topk(files, 16, [small, large], [11, 22], **common)
    alone = [train_topk(files, 16, [small], [11], **common)[0], train_topk(files, 16, [large], [22], **common)[0]]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a.W_dec, b.W_dec)
        torch.testing.assert_close(a.b_enc, b.b_enc)
    with pytest.raises(ValueError, match="must share epochs"):
        train_topk(files, 16, [small, TrainConfig(epochs=3, batch_size=128)], [1, 2], **common)

"""Test windows share no token with train windows, and the examples' data checks, on lakes built so that a
silent window could sit next to a train window in the same context."""

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sae.config import ExamplesConfig
from sae.examples import checks
from sae.examples.neighbours import nearest_latents
from sae.examples.selection import WINDOW_SCHEMA, coverage, select_examples

CTX_LEN, WINDOW = 24, 8
CFG = ExamplesConfig(window=WINDOW, peak_position=0.5, n_top=2, n_quantiles=2, n_train_quantile=0, n_test=2,
                     n_random=6, n_train_random=3, n_neighbour=2, neighbour_latents=1)
# Latent 0 fires once per context, at token 12: its top windows (contexts 0 and 1) and test windows (2 and 3)
# cover tokens 9..16, and most silent windows of a 24-token context overlap them. Latent 1 peaks at token 19
# of context 0, so its window (tokens 16..23) is a hard negative of latent 0 that touches latent 0's train
# window at token 16; at token 3 of context 2 it gives a hard negative that touches nothing of latent 0's.
FIRES = [(0, 0, 12, 4.0), (0, 1, 12, 3.0), (0, 2, 12, 2.0), (0, 3, 12, 1.0), (1, 0, 19, 5.0), (1, 2, 3, 4.0)]
DECODER = torch.tensor([[1.0, 0.0], [0.9, 0.1]])  # latents 0 and 1 are each other's nearest


def write_lake(root, fires: list[tuple[int, int, int, float]], n_contexts: int):
    latents = pa.table({"latent": pa.array([f[0] for f in fires], pa.int32()),
                        "ctx_id": pa.array([f[1] for f in fires], pa.int32()),
                        "pos": pa.array([f[2] for f in fires], pa.int16()),
                        "act": pa.array([f[3] for f in fires], pa.float16())}).sort_by([("latent", "ascending")])
    pq.write_table(latents, root / "latents.parquet")
    tokens = np.arange(n_contexts * CTX_LEN, dtype=np.int32).reshape(n_contexts, CTX_LEN)
    pq.write_table(pa.table({"ctx_id": np.arange(n_contexts, dtype=np.int32),
                             "tokens": pa.array(tokens.tolist(), type=pa.list_(pa.int32()))}),
                   root / "contexts.parquet")
    return [root / "latents.parquet"], root / "contexts.parquet"


def random_fires(n_contexts: int, n_latents: int, seed: int) -> list[tuple[int, int, int, float]]:
    """Latents that fire in a few spots per context, so silent stretches sit between activating ones."""
    rng = np.random.default_rng(seed)
    hits = np.argwhere(rng.random((n_latents, n_contexts, CTX_LEN)) < np.linspace(0.01, 0.08, n_latents)[:, None, None])
    return [(int(latent), int(c), int(p), float(rng.gamma(2.0, 1.0)) + 0.1) for latent, c, p in hits]


@pytest.fixture(scope="module", params=["constructed", "random"])
def lake(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"disjoint-{request.param}")
    if request.param == "constructed":
        latents, contexts = write_lake(root, FIRES, n_contexts=4)
        decoder = DECODER
    else:
        latents, contexts = write_lake(root, random_fires(n_contexts=12, n_latents=8, seed=3), n_contexts=12)
        decoder = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    neighbours = nearest_latents(decoder, CFG.neighbour_latents)
    table = select_examples(latents, contexts, "sae-a", CFG, seed=1, neighbours=neighbours)
    examples = root / "examples.parquet"
    pq.write_table(table, examples)
    return {"kind": request.param, "latents": latents, "contexts": contexts, "decoder": decoder,
            "examples": examples, "table": table}


def token_pairs(con, examples) -> tuple[int, int, int]:
    """The examples table joined with itself and with the latents table token by token: (train/test pairs of
    one latent on one token, silent windows' tokens where the latent fires, test windows in train contexts)."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE tokens AS
        SELECT latent, split, kind, ctx_id, start, start + unnest(range({WINDOW})) AS pos
        FROM read_parquet('{examples}')""")
    shared = con.sql("""SELECT count(*) FROM tokens AS tr JOIN tokens AS te USING (latent, ctx_id, pos)
                        WHERE tr.split = 'train' AND te.split = 'test'""").fetchall()[0][0]
    firing = con.sql("""SELECT count(*) FROM tokens AS t JOIN latents AS a USING (latent, ctx_id, pos)
                        WHERE t.kind IN ('random', 'neighbour') AND a.act != 0""").fetchall()[0][0]
    near = con.sql("""SELECT count(DISTINCT (te.latent, te.ctx_id, te.start)) FROM tokens AS te
                      JOIN (SELECT DISTINCT latent, ctx_id FROM tokens WHERE split = 'train') USING (latent, ctx_id)
                      WHERE te.split = 'test' AND te.kind IN ('random', 'neighbour')""").fetchall()[0][0]
    return shared, firing, near


def test_no_test_window_shares_a_token_with_a_train_window(lake):
    table = lake["table"]
    with duckdb.connect() as con:
        con.execute(f"CREATE TEMP VIEW latents AS SELECT * FROM read_parquet('{lake['latents'][0]}')")
        shared, firing, near = token_pairs(con, lake["examples"])
    assert shared == 0 and firing == 0  # the selection before this rule shared 32 and 73 tokens on these lakes
    rows = table.to_pylist()
    if lake["kind"] == "random":
        assert near > 0  # silent test windows do sit in contexts of train windows: the rule was exercised
    else:
        neighbours = {(r["ctx_id"], r["start"]) for r in rows if r["latent"] == 0 and r["kind"] == "neighbour"}
        assert neighbours == {(2, 0)}  # (0, 16) is silent too but touches the train window at token 16
        covered = {c["latent"]: c for c in coverage(table, CFG).to_pylist()}
        assert (covered[0]["n_train_random"], covered[0]["n_test_random"]) == (CFG.n_train_random, CFG.n_random)


def test_same_seed_same_disjoint_examples(lake):
    again = select_examples(lake["latents"], lake["contexts"], "sae-a", CFG, seed=1,
                            neighbours=nearest_latents(lake["decoder"], CFG.neighbour_latents))
    assert again.equals(lake["table"])


def test_both_checks_pass_on_the_selection(lake):
    table = lake["table"]
    disjoint = checks.train_test_disjoint([lake["examples"]])
    assert disjoint.passed and disjoint.severity == "error"
    assert disjoint.metadata["n_windows"] == table.num_rows and disjoint.metadata["n_overlapping"] == 0
    assert f"{table.num_rows} windows" in disjoint.description
    silent = checks.silent_windows_silent([lake["examples"]], lake["latents"])
    n_silent = sum(k in ("random", "neighbour") for k in table.column("kind").to_pylist())
    assert silent.passed and silent.metadata == {"n_windows": n_silent, "n_active": 0, "shown": []}


def hand_made(tmp_path, rows: list[dict]):
    """An examples table written by hand: WINDOW_SCHEMA plus the token and activation lists."""
    table = pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA)
    table = table.append_column("tokens", pa.array([[0] * WINDOW] * len(rows), pa.list_(pa.int32())))
    table = table.append_column("acts", pa.array([[0.0] * WINDOW] * len(rows), pa.list_(pa.float32())))
    path = tmp_path / "examples.parquet"
    pq.write_table(table, path)
    return path


def window(latent, split, kind, ctx_id, start, bin=None, peak_act=0.0):
    return {"latent": latent, "split": split, "kind": kind, "bin": bin, "ctx_id": ctx_id, "start": start,
            "peak_act": peak_act}


def test_disjoint_check_fails_on_an_overlap(tmp_path):
    path = hand_made(tmp_path, [
        window(0, "train", "top", 0, 9, bin=1, peak_act=4.0),
        window(0, "test", "random", 0, 16),  # token 16 is also the train window's last token
        window(0, "test", "random", 1, 9),  # another context: no overlap
        window(1, "test", "random", 0, 9),  # another latent: no overlap
    ])
    outcome = checks.train_test_disjoint([path])
    assert not outcome.passed and outcome.severity == "error"
    assert outcome.metadata["n_overlapping"] == 1
    assert outcome.metadata["shown"] == [{"latent": 0, "ctx_id": 0, "train_kind": "top", "train_start": 9,
                                          "test_kind": "random", "test_start": 16}]
    assert "1 pairs" in outcome.description


def test_silent_check_fails_on_a_random_window_where_the_latent_fires(tmp_path):
    latents, _ = write_lake(tmp_path, FIRES, n_contexts=4)
    path = hand_made(tmp_path, [
        window(0, "test", "random", 0, 5),  # covers token 12, where latent 0 fires: its acts column says zeros
        window(0, "train", "random", 1, 0),  # tokens 0..7: silent
        window(0, "test", "quantile", 2, 9, bin=0, peak_act=2.0),  # activating kinds are not checked
    ])
    outcome = checks.silent_windows_silent([path], latents)
    assert not outcome.passed and outcome.severity == "error"
    assert outcome.metadata["n_windows"] == 2 and outcome.metadata["n_active"] == 1
    assert outcome.metadata["shown"] == [{"latent": 0, "split": "test", "kind": "random", "ctx_id": 0, "start": 5,
                                          "n_active": 1, "max_act": 4.0}]


def test_checks_pass_on_an_empty_partition(tmp_path):
    latents, _ = write_lake(tmp_path, FIRES, n_contexts=4)
    empty = hand_made(tmp_path, [])
    for files in ([], [empty]):
        disjoint = checks.train_test_disjoint(files)
        silent = checks.silent_windows_silent(files, latents)
        assert disjoint.passed and disjoint.metadata["n_windows"] == 0
        assert silent.passed and silent.metadata["n_windows"] == 0
    with pytest.raises(FileNotFoundError, match="materialize `latents`"):
        checks.silent_windows_silent([empty], [])


def test_no_silent_windows_asked_for(tmp_path):
    latents, contexts = write_lake(tmp_path, FIRES, n_contexts=4)
    cfg = ExamplesConfig(**{**CFG.__dict__, "n_random": 0, "n_train_random": 0})
    neighbours = nearest_latents(DECODER, cfg.neighbour_latents)
    table = select_examples(latents, contexts, "sae-a", cfg, seed=1, neighbours=neighbours)
    rows = table.to_pylist()
    assert not [r for r in rows if r["kind"] == "random"]
    # latent 1's hard negative at (ctx 0, start 9) is silent but touches its train window at token 16
    assert {(r["latent"], r["ctx_id"], r["start"]) for r in rows if r["kind"] == "neighbour"} == {
        (0, 2, 0), (1, 1, 9), (1, 2, 9)}
    assert table.schema.field("split").type == pa.string()

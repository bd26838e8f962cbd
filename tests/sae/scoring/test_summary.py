"""Where the LLM beats the token baseline: its primary metric minus the baseline's, paired by latent, with a
bootstrap interval, through the real query over Parquet of the scores schema."""

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sae.scoring.metrics import versus_baseline
from sae.scoring.stage import llm_minus_tokens

from .test_checks import scores


def with_partition(table: pa.Table, layer: str, sae: str) -> pa.Table:
    return table.append_column("layer", pa.array([layer] * table.num_rows)).append_column(
        "sae", pa.array([sae] * table.num_rows))


def test_the_llm_beats_the_baseline_only_where_the_paired_interval_is_above_zero(tmp_path):
    rng = np.random.default_rng(0)
    hard = rng.uniform(0.5, 0.9, 30)  # how hard each latent is: shared by both explainers, cancelled by pairing
    parts = [
        with_partition(scores("detection", "real", hard + 0.05 + rng.normal(0, 0.01, 30)), "layers.3", "x"),
        with_partition(scores("detection", "real", hard, explainer="tokens"), "layers.3", "x"),
        with_partition(scores("detection", "control", hard - 0.3), "layers.3", "x"),  # controls are not compared
        # Another variant: the LLM and the baseline alike; and the embedding scorer, judged by its AUC.
        with_partition(scores("detection", "real", hard + rng.normal(0, 0.05, 30)), "layers.3", "y"),
        with_partition(scores("detection", "real", hard, explainer="tokens"), "layers.3", "y"),
        with_partition(scores("embedding", "real", hard, auc=hard - 0.2), "layers.3", "y"),
        with_partition(scores("embedding", "real", hard, auc=hard, explainer="tokens"), "layers.3", "y"),
    ]
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.concat_tables(parts), path)
    with duckdb.connect() as con:
        con.read_parquet(str(path)).create_view("scores")
        versus = llm_minus_tokens(con, n_boot=500, seed=0)
    assert set(versus) == {("layers.3", "x", "detection"), ("layers.3", "y", "detection"),
                           ("layers.3", "y", "embedding")}
    better = versus[("layers.3", "x", "detection")]
    assert better["n_vs_tokens"] == 30 and better["beats_tokens"] and 0.04 < better["minus_tokens_lo"] < 0.05
    same = versus[("layers.3", "y", "detection")]
    assert not same["beats_tokens"] and same["minus_tokens_lo"] < 0 < same["minus_tokens_hi"]
    worse = versus[("layers.3", "y", "embedding")]
    assert abs(worse["minus_tokens"] + 0.2) < 1e-6  # the AUC, not the accuracy
    assert versus_baseline(better).endswith("LLM better") and versus_baseline(same).endswith("no clear difference")
    assert versus_baseline(worse).endswith("baseline better") and versus_baseline({"minus_tokens": None}) == "–"

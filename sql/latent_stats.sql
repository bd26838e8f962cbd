-- Per-latent statistics of one latents partition, every latent of the SAE included (dead ones too).
-- $files: the partition's Parquet files; $num_latents: the SAE's width; $n_tokens: tokens encoded.
WITH fired AS (
    SELECT
        latent,
        count(*) AS n_fired,
        count(DISTINCT ctx_id) AS n_contexts,
        max(act) AS max_act,
        avg(act) AS mean_act,
        quantile_cont(act, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]) AS quantile_edges
    FROM read_parquet($files)
    GROUP BY latent
)
SELECT
    r.latent::INTEGER AS latent,
    coalesce(f.n_fired, 0)::BIGINT AS n_fired,
    coalesce(f.n_contexts, 0)::BIGINT AS n_contexts,
    coalesce(f.n_fired, 0) / $n_tokens::DOUBLE AS frequency,
    coalesce(f.max_act, 0)::FLOAT AS max_act,
    coalesce(f.mean_act, 0)::FLOAT AS mean_act,
    f.quantile_edges::FLOAT[] AS quantile_edges,
    f.n_fired IS NULL AS dead
FROM range($num_latents) AS r(latent)
LEFT JOIN fired AS f ON f.latent = r.latent
ORDER BY r.latent

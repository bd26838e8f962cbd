-- Per-latent statistics of one latents partition, every latent of the SAE included (dead ones too).
-- $files: the partition's Parquet files; $num_latents: the SAE's width; $n_tokens: tokens encoded;
-- $hist_bins: bins of `histogram`, the activations counted in equal bins over (0, max_act] (the latent
-- browser draws it; counting per page would scan every chunk file of the partition).
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
), binned AS (
    SELECT l.latent, least(floor(l.act::DOUBLE / f.max_act * $hist_bins), $hist_bins - 1)::INTEGER AS bin,
           count(*) AS n
    FROM read_parquet($files) AS l
    JOIN fired AS f USING (latent)
    WHERE f.max_act > 0
    GROUP BY ALL
), histograms AS (
    SELECT latent, list_transform(range($hist_bins), lambda i: coalesce(list_filter(pairs, lambda p: p.bin = i)[1].n, 0))
               AS histogram
    FROM (SELECT latent, list({'bin': bin, 'n': n}) AS pairs FROM binned GROUP BY latent)
)
SELECT
    r.latent::INTEGER AS latent,
    coalesce(f.n_fired, 0)::BIGINT AS n_fired,
    coalesce(f.n_contexts, 0)::BIGINT AS n_contexts,
    coalesce(f.n_fired, 0) / $n_tokens::DOUBLE AS frequency,
    coalesce(f.max_act, 0)::FLOAT AS max_act,
    coalesce(f.mean_act, 0)::FLOAT AS mean_act,
    f.quantile_edges::FLOAT[] AS quantile_edges,
    f.n_fired IS NULL AS dead,
    h.histogram::BIGINT[] AS histogram
FROM range($num_latents) AS r(latent)
LEFT JOIN fired AS f ON f.latent = r.latent
LEFT JOIN histograms AS h ON h.latent = r.latent
ORDER BY r.latent

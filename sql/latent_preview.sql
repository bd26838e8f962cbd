-- The $n most frequently firing latents of one partition, with where each reaches its highest activation.
SELECT
    latent,
    count(*) AS n_fired,
    max(act) AS max_act,
    arg_max({'ctx_id': ctx_id, 'pos': pos}, act) AS peak
FROM read_parquet($files)
GROUP BY latent
ORDER BY n_fired DESC, latent
LIMIT $n

-- Non-activating example windows: for every latent of $latents, up to $n_random windows (test split,
-- kind 'random') in which the latent is zero at every token. Candidates i in [$first, $first +
-- $n_candidates) are drawn reproducibly from hash($seed, $sae, latent, i); those that touch any
-- activation of the latent are dropped. The caller asks again, with further candidates, for latents
-- that fire so often that too few candidates were silent.
WITH candidates AS (
    SELECT
        l.latent,
        i,
        (hash($seed, $sae, l.latent, i, 'ctx') % $n_contexts)::INTEGER AS ctx_id,
        (hash($seed, $sae, l.latent, i, 'start') % ($ctx_len - $window + 1))::INTEGER AS start
    FROM (SELECT unnest($latents) AS latent) AS l, range($first, $first + $n_candidates) AS r(i)
),
clean AS (
    SELECT c.* FROM candidates AS c
    WHERE NOT EXISTS (
        SELECT 1 FROM read_parquet($files) AS a
        WHERE a.latent = c.latent AND a.ctx_id = c.ctx_id AND a.pos BETWEEN c.start AND c.start + $window - 1
    )
),
distinct_windows AS (
    SELECT *, row_number() OVER (PARTITION BY latent, ctx_id, start ORDER BY i) AS copy FROM clean
)
SELECT latent::INTEGER AS latent, 'test' AS split, 'random' AS kind, NULL::SMALLINT AS bin, ctx_id,
       start::SMALLINT AS start, 0::FLOAT AS peak_act, i
FROM distinct_windows
WHERE copy = 1
QUALIFY row_number() OVER (PARTITION BY latent ORDER BY i) <= $n_random
ORDER BY latent, ctx_id, start

-- Candidate non-activating windows: for every latent of the registered table `wanted` (latent), the
-- candidates i in [$first, $first + $n_candidates), drawn reproducibly from hash($seed, $sae, latent, i),
-- that touch no activation of the latent. sql/examples_random_pick.sql picks the windows among them; the
-- caller asks again, with further candidates, for latents that fire so often that too few were silent.
WITH candidates AS (
    SELECT
        w.latent,
        i,
        (hash($seed, $sae, w.latent, i, 'ctx') % $n_contexts)::INTEGER AS ctx_id,
        (hash($seed, $sae, w.latent, i, 'start') % ($ctx_len - $window + 1))::INTEGER AS start
    FROM wanted AS w, range($first, $first + $n_candidates) AS r(i)
)
SELECT c.latent::INTEGER AS latent, c.ctx_id, c.start::SMALLINT AS start, c.i
FROM candidates AS c
WHERE NOT EXISTS (
    SELECT 1 FROM read_parquet($files) AS a
    WHERE a.latent = c.latent AND a.ctx_id = c.ctx_id AND a.pos BETWEEN c.start AND c.start + $window - 1
)

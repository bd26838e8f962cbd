-- The latents of one variant that fire most at the given token positions ($ctx_ids, $positions: parallel
-- lists, $n_hits of them, within contexts $first_ctx..$last_ctx): mean activation over every position (silent
-- ones count as 0), at most $limit. The ctx_id range skips the chunk files (each a range of contexts) outside it.
WITH hits AS (
    SELECT unnest($ctx_ids)::INTEGER AS ctx_id, unnest($positions)::SMALLINT AS pos
)
SELECT l.latent, sum(l.act::DOUBLE) / $n_hits AS mean_act, max(l.act) AS max_act, count(*) AS n_fired
FROM latents AS l
JOIN hits AS h ON l.ctx_id = h.ctx_id AND l.pos = h.pos
WHERE l.layer = $layer AND l.sae = $sae AND l.ctx_id BETWEEN $first_ctx AND $last_ctx
GROUP BY l.latent
ORDER BY mean_act DESC, l.latent
LIMIT $limit

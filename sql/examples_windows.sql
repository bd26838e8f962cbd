-- Attaches to each chosen window ($windows: latent, split, kind, bin, ctx_id, start, peak_act) its token
-- ids and the latent's activation at each of its $window tokens (0 where the latent is silent).
WITH offsets AS (
    SELECT w.*, o.token FROM windows AS w, range($window) AS o(token)
),
acts AS (
    SELECT o.latent, o.split, o.kind, o.ctx_id, o.start, o.token, coalesce(a.act, 0)::FLOAT AS act
    FROM offsets AS o
    LEFT JOIN read_parquet($files) AS a
        ON a.latent = o.latent AND a.ctx_id = o.ctx_id AND a.pos = o.start + o.token
)
SELECT
    w.latent, w.split, w.kind, w.bin, w.ctx_id, w.start, w.peak_act,
    c.tokens[w.start + 1 : w.start + $window] AS tokens,
    a.acts
FROM windows AS w
JOIN (
    SELECT latent, split, kind, ctx_id, start, list(act ORDER BY token) AS acts
    FROM acts GROUP BY ALL
) AS a USING (latent, split, kind, ctx_id, start)
JOIN read_parquet($contexts) AS c USING (ctx_id)
ORDER BY w.latent, w.split, w.kind, w.bin, w.ctx_id, w.start

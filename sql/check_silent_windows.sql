-- Silent windows (kind 'random' or 'neighbour', either split) in which the latents table holds a non-zero
-- activation of the window's latent at some token. Returns one row: how many silent windows were checked,
-- how many are not silent, and the first $n_shown of those (with their count of active tokens and peak).
WITH silent AS (
    SELECT latent, split, kind, ctx_id, start, len(tokens) AS width
    FROM read_parquet($examples)
    WHERE kind IN ('random', 'neighbour')
),
active AS (
    SELECT s.latent, s.split, s.kind, s.ctx_id, s.start, count(*) AS n_active, max(a.act)::FLOAT AS max_act
    FROM silent AS s JOIN read_parquet($latents) AS a
        ON a.latent = s.latent AND a.ctx_id = s.ctx_id AND a.pos >= s.start AND a.pos < s.start + s.width
    WHERE a.act != 0
    GROUP BY s.latent, s.split, s.kind, s.ctx_id, s.start
)
SELECT
    (SELECT count(*) FROM silent) AS n_windows,
    (SELECT count(*) FROM active) AS n_active,
    (SELECT coalesce(list(a), []) FROM (
        SELECT * FROM active ORDER BY latent, split, kind, ctx_id, start LIMIT $n_shown) AS a) AS shown

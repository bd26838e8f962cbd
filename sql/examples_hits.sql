-- The latent's non-zero activations inside each chosen window (the registered table `windows`, with a
-- row id `wid`): one row per hit, at offset i of the window. The latents are probed once per window by
-- (latent, ctx_id) and a position range; the dense per-token lists are filled in by the caller.
SELECT w.wid, (a.pos - w.start)::SMALLINT AS i, a.act::FLOAT AS act
FROM windows AS w
JOIN read_parquet($files) AS a
    ON a.latent = w.latent AND a.ctx_id = w.ctx_id AND a.pos BETWEEN w.start AND w.start + $window - 1

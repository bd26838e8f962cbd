-- Pairs of windows of one latent, one train and one test, that share a token (same context, overlapping
-- token ranges): the explainer has read text that scoring holds out as unseen. Returns one row: how many
-- windows and latents were checked, how many such pairs there are, and the first $n_shown of them.
WITH windows AS (
    SELECT latent, split, kind, ctx_id, start, len(tokens) AS width FROM read_parquet($files)
),
touching AS (
    SELECT tr.latent, tr.ctx_id, tr.kind AS train_kind, tr.start AS train_start,
           te.kind AS test_kind, te.start AS test_start
    FROM windows AS tr JOIN windows AS te
        ON te.latent = tr.latent AND te.ctx_id = tr.ctx_id
       AND te.start < tr.start + tr.width AND tr.start < te.start + te.width
    WHERE tr.split = 'train' AND te.split = 'test'
)
SELECT
    (SELECT count(*) FROM windows) AS n_windows,
    (SELECT count(DISTINCT latent) FROM windows) AS n_latents,
    (SELECT count(*) FROM touching) AS n_overlapping,
    (SELECT coalesce(list(o), []) FROM (
        SELECT * FROM touching ORDER BY latent, ctx_id, train_start, test_start LIMIT $n_shown) AS o) AS shown

-- Hard negatives: for every latent, up to $n_neighbour windows (test split, kind 'neighbour') where one of
-- its nearest latents (the registered table `neighbours`: latent, neighbour, rank) peaks but the latent
-- itself is zero at every token. Candidates are each neighbour's $per_neighbour strongest context peaks
-- (from the temporary table `peaks`), nearest neighbour and strongest peak first. A candidate that shares a
-- token with one of the latent's train windows (the registered table `train_windows`) is dropped: the
-- explainer has read that text, so it cannot be held out.
WITH strongest AS (
    SELECT latent AS neighbour, ctx_id, peak_act, peak_pos
    FROM peaks
    QUALIFY row_number() OVER (PARTITION BY latent ORDER BY peak_act DESC, ctx_id) <= $per_neighbour
),
candidates AS (
    SELECT n.latent, n.rank, s.ctx_id, s.peak_act,
           greatest(0, least(s.peak_pos - $peak_offset, $ctx_len - $window))::INTEGER AS start
    FROM neighbours AS n JOIN strongest AS s USING (neighbour)
    -- only latents that fire get examples (`neighbours` holds the latents of one range alone)
    WHERE n.latent IN (SELECT DISTINCT latent FROM peaks)
),
silent AS (
    SELECT c.* FROM candidates AS c
    WHERE NOT EXISTS (
        SELECT 1 FROM read_parquet($files) AS a
        WHERE a.latent = c.latent AND a.ctx_id = c.ctx_id AND a.pos BETWEEN c.start AND c.start + $window - 1
    ) AND NOT EXISTS (
        SELECT 1 FROM train_windows AS t
        WHERE t.latent = c.latent AND t.ctx_id = c.ctx_id AND abs(t.start - c.start) < $window
    )
    QUALIFY row_number() OVER (PARTITION BY c.latent, c.ctx_id, c.start ORDER BY c.rank, c.peak_act DESC) = 1
)
SELECT latent::INTEGER AS latent, 'test' AS split, 'neighbour' AS kind, NULL::SMALLINT AS bin,
       ctx_id::INTEGER AS ctx_id, start::SMALLINT AS start, 0::FLOAT AS peak_act
FROM silent
QUALIFY row_number() OVER (PARTITION BY latent ORDER BY rank, peak_act DESC, ctx_id) <= $n_neighbour

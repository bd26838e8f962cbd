-- The silent windows of the latents in `wanted`, over every round of candidates so far (`random_parts`, from
-- sql/examples_random.sql), in candidate order i, such that no window of one split shares a token with a
-- window of the latent in the other split (windows have $window tokens, so two share tokens where their
-- contexts match and their starts are under $window apart):
--   train: the first $n_train_random that share no token with an activating test window (`activating`);
--   test:  the first $n_random that share no token with an activating train window or a silent train one.
-- A latent has at most one activating window per context, so the left join below adds no rows.
WITH windows AS MATERIALIZED (
    SELECT d.latent, d.ctx_id, d.start, d.i, a.split AS touches
    FROM (
        SELECT latent, ctx_id, start, min(i) AS i
        FROM random_parts WHERE latent IN (SELECT latent FROM wanted)
        GROUP BY latent, ctx_id, start
    ) AS d
    LEFT JOIN activating AS a ON a.latent = d.latent AND a.ctx_id = d.ctx_id AND abs(a.start - d.start) < $window
),
train AS MATERIALIZED (
    SELECT * FROM windows WHERE touches IS DISTINCT FROM 'test'
    QUALIFY row_number() OVER (PARTITION BY latent ORDER BY i) <= $n_train_random
),
test AS (
    SELECT w.* FROM windows AS w
    LEFT JOIN train AS t ON t.latent = w.latent AND t.ctx_id = w.ctx_id AND abs(t.start - w.start) < $window
    WHERE w.touches IS DISTINCT FROM 'train' AND t.latent IS NULL
    QUALIFY row_number() OVER (PARTITION BY w.latent ORDER BY w.i) <= $n_random
)
SELECT latent::INTEGER AS latent, split, 'random' AS kind, NULL::SMALLINT AS bin, ctx_id::INTEGER AS ctx_id,
       start::SMALLINT AS start, 0::FLOAT AS peak_act
FROM (SELECT *, 'train' AS split FROM train UNION ALL SELECT *, 'test' AS split FROM test)

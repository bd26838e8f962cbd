-- Activating example windows of one latents partition, split into disjoint train and test sets.
-- Reads the temporary table `peaks` (sql/examples_peaks.sql); selects for the latents in [$first_latent,
-- $end_latent) alone (`peaks` may hold others: the nearest latents of those).
--
-- Each (latent, context) gives one candidate window, placed around the context's peak activation (the
-- peak sits at $peak_offset tokens into the window, clamped so the window stays inside the context), so
-- two examples of a latent never share a context and train and test never overlap.
--   train: the $n_top highest peaks (kind 'top'), then $n_train_quantile quantile draws;
--   test:  the next $n_test quantile draws (kind 'quantile').
-- A latent with fewer contexts than train and test ask for together splits them in proportion to what each
-- asks (train gets ceil(n * train / (train + test)), at least one, and test at least one when n >= 2), so a
-- rare latent still has test windows to be scored on.
-- Bins split [min, max] of the latent's non-zero activations into $n_quantiles equal intervals. Draws go
-- round-robin over the bins (the first window of every bin, then the second, ...), so each bin gives an
-- equal share where it can; inside a bin they are ordered by hash($seed, $sae, latent, ctx_id), so the
-- selection is reproducible from (seed, SAE, latent).
WITH rows AS (
    SELECT latent, ctx_id, pos, act FROM read_parquet($files)
    WHERE latent >= $first_latent AND latent < $end_latent
),
bounds AS (
    SELECT latent, min(act) AS lo, max(act) AS hi FROM rows GROUP BY latent
),
train_caps AS (
    SELECT latent,
           CASE WHEN count(*) >= $n_top + $n_train_quantile + $n_test THEN $n_top + $n_train_quantile
                ELSE greatest(1, least(count(*) - 1, ceil(count(*) * ($n_top + $n_train_quantile)
                                                          / ($n_top + $n_train_quantile + $n_test))))
           END::INTEGER AS train_cap
    FROM peaks GROUP BY latent
),
binned AS (
    SELECT
        p.latent, p.ctx_id, p.peak_act, p.peak_pos, c.train_cap,
        least($n_top, c.train_cap) AS n_top_here,
        CASE WHEN b.hi > b.lo
             THEN least(floor((p.peak_act - b.lo) / (b.hi - b.lo) * $n_quantiles), $n_quantiles - 1)
             ELSE 0 END::INTEGER AS bin,
        row_number() OVER (PARTITION BY p.latent ORDER BY p.peak_act DESC, p.ctx_id) AS top_rank,
        hash($seed, $sae, p.latent, p.ctx_id) AS draw
    FROM peaks AS p JOIN bounds AS b USING (latent) JOIN train_caps AS c USING (latent)
),
in_bins AS (
    SELECT *, row_number() OVER (PARTITION BY latent, bin ORDER BY draw, ctx_id) AS bin_rank
    FROM binned
    WHERE top_rank > n_top_here
),
drawn AS (
    SELECT *, row_number() OVER (PARTITION BY latent ORDER BY bin_rank, bin) AS draw_rank FROM in_bins
),
chosen AS (
    SELECT latent, ctx_id, peak_act, peak_pos, bin, 'train' AS split, 'top' AS kind
    FROM binned WHERE top_rank <= n_top_here
    UNION ALL
    SELECT latent, ctx_id, peak_act, peak_pos, bin,
           CASE WHEN draw_rank <= train_cap - n_top_here THEN 'train' ELSE 'test' END AS split, 'quantile' AS kind
    FROM drawn WHERE draw_rank <= train_cap - n_top_here + $n_test
)
SELECT
    latent::INTEGER AS latent, split, kind, bin::SMALLINT AS bin, ctx_id::INTEGER AS ctx_id,
    greatest(0, least(peak_pos - $peak_offset, $ctx_len - $window))::SMALLINT AS start,
    peak_act::FLOAT AS peak_act
FROM chosen
ORDER BY latent, split, kind, bin, ctx_id

-- Each latent's peak in each context it fires in (kept as a temporary table for the example queries): of the
-- latents in [$first_latent, $end_latent), and of the nearest latents outside it whose peaks give their hard
-- negatives (the registered table `nearby_latents`: latent). Two scans, so the range one prunes row groups.
CREATE OR REPLACE TEMP TABLE peaks AS
SELECT latent, ctx_id, max(act) AS peak_act, arg_max(pos, act) AS peak_pos
FROM read_parquet($files)
WHERE latent >= $first_latent AND latent < $end_latent
GROUP BY latent, ctx_id
UNION ALL
SELECT latent, ctx_id, max(act) AS peak_act, arg_max(pos, act) AS peak_pos
FROM read_parquet($files)
WHERE latent IN (SELECT latent FROM nearby_latents)
GROUP BY latent, ctx_id

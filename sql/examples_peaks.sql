-- Each latent's peak in each context it fires in (kept as a temporary table for the example queries).
CREATE OR REPLACE TEMP TABLE peaks AS
SELECT latent, ctx_id, max(act) AS peak_act, arg_max(pos, act) AS peak_pos
FROM read_parquet($files)
GROUP BY latent, ctx_id

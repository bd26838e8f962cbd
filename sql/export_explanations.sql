-- One row per explained latent (temp table `explanation_rows`) with its scores pivoted into one column each
-- (temp table `score_values`, see export_score_values.sql); latents without scores get nulls.
WITH pivoted AS (
    PIVOT score_values ON name USING max(value) GROUP BY layer, sae, latent
)
SELECT * FROM explanation_rows LEFT JOIN pivoted USING (layer, sae, latent)
ORDER BY layer, sae, latent

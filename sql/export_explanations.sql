-- One row per explanation (temp table `explanation_rows`: a latent and the explainer that wrote it) with its
-- scores pivoted into one column each (temp table `score_values`, see export_score_values.sql); rows without
-- scores get nulls.
WITH pivoted AS (
    PIVOT score_values ON name USING max(value) GROUP BY layer, sae, latent, explainer
)
SELECT * FROM explanation_rows LEFT JOIN pivoted USING (layer, sae, latent, explainer)
ORDER BY layer, sae, latent, explainer

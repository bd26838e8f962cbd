-- One row per explanation (temp table `explanation_rows`: a latent and the explainer that wrote it) with its
-- scores pivoted into one column each (temp table `score_values`, see export_score_values.sql); the scores of
-- scorers that read no explanation (explainer 'none': the intruder) go to every explanation row of their latent;
-- rows without scores get nulls.
WITH pivoted AS (
    PIVOT (SELECT * FROM score_values WHERE explainer <> 'none') ON name USING max(value)
    GROUP BY layer, sae, latent, explainer
),
explanation_free AS (
    PIVOT (SELECT * FROM score_values WHERE explainer = 'none') ON name USING max(value) GROUP BY layer, sae, latent
)
SELECT * FROM explanation_rows
LEFT JOIN pivoted USING (layer, sae, latent, explainer)
LEFT JOIN explanation_free USING (layer, sae, latent)
ORDER BY layer, sae, latent, explainer

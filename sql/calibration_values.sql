-- Per scorer, scorer model, explainer and source: the scores of the planted latents ($planted: the planted
-- variants' names) as lists, one value per planted latent, averaged over the layers first (a planted latent
-- fires on the same tokens at every layer, so its layers are one observation, not several). Every (scorer,
-- scorer_model) that has scores at all gets at least one row, with NULL explainer where it scored no planted
-- latent. Reads the `scores` view.
WITH per_latent AS (
    SELECT scorer, scorer_model, explainer, source, sae, latent,
           avg(balanced_accuracy) AS balanced_accuracy, avg(auc) AS auc, avg(accuracy) AS accuracy,
           avg(correlation) AS correlation
    FROM scores
    WHERE list_contains($planted::VARCHAR[], sae)
    GROUP BY ALL
),
judges AS (
    SELECT DISTINCT scorer, scorer_model FROM scores
)
SELECT j.scorer, j.scorer_model, p.explainer, p.source,
       coalesce(list(p.balanced_accuracy ORDER BY p.sae, p.latent) FILTER (p.latent IS NOT NULL), [])
           AS balanced_accuracy,
       coalesce(list(p.auc ORDER BY p.sae, p.latent) FILTER (p.latent IS NOT NULL), []) AS auc,
       coalesce(list(p.accuracy ORDER BY p.sae, p.latent) FILTER (p.latent IS NOT NULL), []) AS accuracy,
       coalesce(list(p.correlation ORDER BY p.sae, p.latent) FILTER (p.latent IS NOT NULL), []) AS correlation
FROM judges AS j LEFT JOIN per_latent AS p USING (scorer, scorer_model)
GROUP BY ALL
ORDER BY j.scorer, j.scorer_model, p.explainer, p.source

-- The explainers that explained latents of one variant.
SELECT explainer, count(*) FILTER (WHERE parsed) AS n_parsed
FROM explanations
WHERE layer = $layer AND sae = $sae
GROUP BY explainer
ORDER BY explainer

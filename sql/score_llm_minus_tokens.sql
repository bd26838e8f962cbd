-- Per layer, SAE variant and scorer: the LLM's real score minus the token baseline's on each latent both were
-- scored on (the same test windows), as lists for the summary's bootstrap intervals. Reads the `scores` view.
SELECT
    l.layer, l.sae, l.scorer,
    count(*) AS n_latents,
    list(l.balanced_accuracy - t.balanced_accuracy ORDER BY l.latent) AS balanced_accuracy,
    list(l.auc - t.auc ORDER BY l.latent) AS auc,
    list(l.accuracy - t.accuracy ORDER BY l.latent) AS accuracy,
    list(l.correlation - t.correlation ORDER BY l.latent) AS correlation
FROM scores AS l JOIN scores AS t USING (layer, sae, latent, scorer, source)
WHERE l.explainer = 'llm' AND t.explainer = 'tokens' AND l.source = 'real'
GROUP BY ALL
ORDER BY layer, sae, scorer

-- Per-latent headline score (AUC for the embedding scorer, balanced accuracy for the LLM scorers) for the
-- summary's histograms. Reads the `scores` view.
SELECT layer, sae, explainer, scorer, source,
       CASE WHEN scorer = 'embedding' THEN auc ELSE balanced_accuracy END AS value
FROM scores
ORDER BY layer, sae, explainer, scorer, source, latent

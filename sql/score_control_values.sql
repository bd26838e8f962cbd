-- The control rows (each latent scored with another latent's explanation) of one partition's scores.
-- Reads the view `scores`.
SELECT explainer, scorer, latent, balanced_accuracy, auc
FROM scores
WHERE source = 'control'
ORDER BY explainer, scorer, latent

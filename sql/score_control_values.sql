-- The control rows (each latent scored with another latent's explanation, or the intruder's control question)
-- of one partition's scores, with the chance level of the scorer's primary metric. Reads the view `scores`.
SELECT explainer, scorer, latent, balanced_accuracy, auc, accuracy, correlation, chance
FROM scores
WHERE source = 'control'
ORDER BY explainer, scorer, latent

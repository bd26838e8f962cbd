-- Every score of one latent: per explainer, scorer and source (real: its own explanation; control: another's).
-- The explanation-free scorers (the intruder) have explainer 'none'.
SELECT explainer, scorer, source, explanation_latent, balanced_accuracy, auc, accuracy, correlation, f1,
       n_examples, n_failures, scorer_model
FROM scores
WHERE layer = $layer AND sae = $sae AND latent = $latent
ORDER BY scorer, explainer, source DESC

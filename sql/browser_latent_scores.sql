-- Every score of one latent: per explainer, scorer and source (real: its own explanation; control: another's).
SELECT explainer, scorer, source, explanation_latent, balanced_accuracy, auc, f1, n_examples, n_failures,
       scorer_model
FROM scores
WHERE layer = $layer AND sae = $sae AND latent = $latent
ORDER BY scorer, explainer, source DESC

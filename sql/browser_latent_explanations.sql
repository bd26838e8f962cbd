-- Every explainer's explanation of one latent, newest first.
SELECT explainer, explanation, parsed, completion, explainer_model, backend, prompt_version, attempts,
       copied_example, created_at
FROM explanations
WHERE layer = $layer AND sae = $sae AND latent = $latent
ORDER BY explainer, created_at DESC

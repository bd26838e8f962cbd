-- The intervention scorer's output-side explanation of one latent (explainer llm-output), newest first.
SELECT explainer, explanation, parsed, completion, explainer_model, backend, prompt_version, attempts,
       copied_example, created_at
FROM output_explanations
WHERE layer = $layer AND sae = $sae AND latent = $latent
ORDER BY created_at DESC

-- The parsed explanations of the given latents ($layers, $saes, $latents: parallel lists), one per latent,
-- $explainer's where it has one, else any other explainer's.
WITH wanted AS (
    SELECT unnest($layers) AS layer, unnest($saes) AS sae, unnest($latents) AS latent
)
SELECT w.layer, w.sae, w.latent,
       arg_min(e.explanation, CASE WHEN e.explainer = $explainer THEN 0 ELSE 1 END) AS explanation
FROM wanted AS w
JOIN explanations AS e ON e.layer = w.layer AND e.sae = w.sae AND e.latent = w.latent AND e.parsed
GROUP BY ALL

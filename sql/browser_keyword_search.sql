-- Parsed explanations containing $text (case-insensitive, literally: no wildcards), at most $limit.
SELECT layer, sae, latent, explainer, explanation
FROM explanations
WHERE parsed AND contains(lower(explanation), lower($text))
ORDER BY layer, sae, latent, explainer
LIMIT $limit

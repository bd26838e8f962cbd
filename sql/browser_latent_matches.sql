-- One latent's matched latents in the other variants (either side of a `similarity` pair), best first.
SELECT layer_b AS layer, sae_b AS sae, latent_b AS latent, method, similarity
FROM similarity
WHERE layer_a = $layer AND sae_a = $sae AND latent_a = $latent
UNION ALL
SELECT layer_a, sae_a, latent_a, method, similarity
FROM similarity
WHERE layer_b = $layer AND sae_b = $sae AND latent_b = $latent
ORDER BY method, similarity DESC

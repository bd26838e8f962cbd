-- The matched latent pairs of two variants by $method (either order in `similarity`), best first.
SELECT latent_a, latent_b, similarity
FROM similarity
WHERE method = $method AND layer_a = $layer_a AND sae_a = $sae_a AND layer_b = $layer_b AND sae_b = $sae_b
UNION ALL
SELECT latent_b, latent_a, similarity
FROM similarity
WHERE method = $method AND layer_a = $layer_b AND sae_a = $sae_b AND layer_b = $layer_a AND sae_b = $sae_a
ORDER BY similarity DESC, latent_a
LIMIT $limit OFFSET $offset

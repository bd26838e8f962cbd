-- One latent's activations counted in $bins equal bins over (0, $max_act].
SELECT least(floor(act::DOUBLE / $max_act * $bins), $bins - 1)::INTEGER AS bin, count(*) AS n
FROM latents
WHERE layer = $layer AND sae = $sae AND latent = $latent
GROUP BY ALL
ORDER BY bin

-- One latent's statistics, and the width of its variant (to say what exists when the latent does not).
SELECT s.*, (SELECT count(*) FROM latent_stats WHERE layer = $layer AND sae = $sae) AS num_latents
FROM latent_stats AS s
WHERE s.layer = $layer AND s.sae = $sae AND s.latent = $latent
